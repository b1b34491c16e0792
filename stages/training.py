"""What the sft and grpo stages share: fingerprints, checkpoints, history, outputs.

Checkpoints live in scratch/checkpoints/<stage>-<fingerprint>/, outside DVC's outputs, so a run
killed half-way resumes from its last checkpoint when rerun (`<stage>.resume: auto`). The
fingerprint covers the params and data the run depends on: changed params start a fresh run
instead of resuming someone else's.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from stages.modeling import write_lineage
from stages.params import LoraParams

log = logging.getLogger(__name__)

CHECKPOINT_ROOT = Path("scratch/checkpoints")


def fingerprint(*parts: Any) -> str:
    """Short stable hash of params (dataclasses as dicts) and data records."""
    text = json.dumps(parts, sort_keys=True, default=lambda o: getattr(o, "__dict__", str(o)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes: part of a run key when the run starts from that file's weights."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_dir(stage: str, key: str) -> Path:
    return CHECKPOINT_ROOT / f"{stage}-{key}"


def common_trainer_args(stage: str, run_key: str, seed: int, save_steps: int) -> dict[str, Any]:
    """TrainingArguments both TRL trainers get the same way: checkpoints, seeds, logging, precision."""
    import torch

    return {
        "output_dir": str(checkpoint_dir(stage, run_key)),
        "bf16": torch.cuda.is_available(),  # float32 on CPU
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",  # MLflow is logged by stages.tracking, with our tags and failure handling
        # Under DDP (stages.launch) every LoRA weight takes part in every step. The Trainer's default for a
        # PEFT model (True) searches the graph for unused ones after each backward pass, which costs time
        # and breaks gradient checkpointing.
        "ddp_find_unused_parameters": False,
        "disable_tqdm": False,
    }


def last_checkpoint(directory: Path, resume: str) -> str | None:
    """The newest complete checkpoint to resume from, or None to start fresh.

    A run killed while saving leaves a checkpoint directory without trainer_state.json (the
    Trainer writes it last); resuming from it fails, so such directories are skipped.
    """
    if resume != "auto" or not directory.is_dir():
        return None
    candidates = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                        key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for candidate in candidates:
        if (candidate / "trainer_state.json").is_file():
            log.info("resuming from %s", candidate)
            return str(candidate)
        log.warning("skipping incomplete checkpoint %s (the run was stopped while saving it)", candidate)
    return None


def steps_done(checkpoint: str | None) -> int:
    """Optimizer steps a resumed run had taken before this process (0 for a fresh run), so that
    rates (tokens/s, s/step) count only the work this process did in its runtime."""
    if checkpoint is None:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def mlflow_callback(run):
    """A TrainerCallback that sends every numeric log value to MLflow as it happens."""
    from transformers import TrainerCallback

    class MlflowLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                run.log_metrics({k.replace("/", "_"): float(v) for k, v in logs.items()
                                 if isinstance(v, (int, float)) and math.isfinite(float(v))}, step=state.global_step)

    return MlflowLogger()


def write_history(path: Path, log_history: list[dict], columns: tuple[str, ...],
                  rename: dict[str, str] | None = None) -> None:
    """CSV for `dvc plots` from the trainer's log history (kept across resumes in its checkpoints):
    one row per step, blank where a value was not logged at that step."""
    rename = rename or {}
    rows: dict[int, dict] = {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        row = rows.setdefault(step, {"step": step})
        row.update({rename.get(k, k): v for k, v in entry.items() if isinstance(v, (int, float))})
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow({k: _fmt(rows[step].get(k)) for k in columns})


def lora_config(lora: LoraParams):
    """PEFT's LoraConfig from `lora.*`; TRL applies it through `peft_config=`."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def effective_batch_size(config) -> int:
    """Examples (GRPO: completions) per optimizer step over all processes: batch × accumulation × processes."""
    return config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size


def save_adapter(trainer, out_dir: Path, base_dir: Path, parents: tuple[Path, ...], **details) -> None:
    """Adapter weights (safetensors) + tokenizer + lineage.json into a fresh `out_dir`.

    Every process must call it: under ZeRO-3 or FSDP each holds a shard of the adapter, and
    `save_model` gathers them. Only the main process writes.
    """
    import shutil

    main = trainer.is_world_process_zero()
    if main and out_dir.exists():
        shutil.rmtree(out_dir)
    trainer.save_model(str(out_dir))  # the adapter and the trainer's tokenizer
    if main:
        # the Trainer also pickles its arguments there; nothing reads them, and adapters carry no pickles
        (out_dir / "training_args.bin").unlink(missing_ok=True)
        sort_target_modules(out_dir / "adapter_config.json")
        write_lineage(out_dir, base_dir, parents, **details)


def sort_target_modules(config_path: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in string-hash order, which Python
    randomises per process: sorted, the same adapter is the same bytes (and DVC hash) every run."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))  # PEFT's own layout


def write_json(path: Path, values: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: round(float(v), 6) for k, v in values.items()}, indent=2, sort_keys=True) + "\n")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
