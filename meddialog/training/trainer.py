"""What the sft and grpo stages share: fingerprints, checkpoints, history, outputs.

Checkpoints live in scratch/checkpoints/<stage>-<fingerprint>/, outside DVC's outputs, so a run
killed half-way resumes from its last checkpoint when rerun (`<stage>.resume: auto`). The
fingerprint covers the params and data the run depends on: changed params start a fresh run
instead of resuming someone else's.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from meddialog.errors import UserError
from meddialog.modeling.loading import write_lineage
from meddialog.modeling.precision import Precision
from meddialog.params import LoraParams
from meddialog.paths import CHECKPOINT_ROOT

log = logging.getLogger(__name__)



def checkpoint_dir(stage: str, key: str) -> Path:
    return CHECKPOINT_ROOT / f"{stage}-{key}"


def common_trainer_args(stage: str, run_key: str, seed: int, save_steps: int, precision: Precision) -> dict[str, Any]:
    """TrainingArguments both TRL trainers get the same way: checkpoints, seeds, logging, precision."""
    bf16 = precision.dtype == "bfloat16"
    return {
        "output_dir": str(checkpoint_dir(stage, run_key)),
        "bf16": bf16,  # autocast; the LoRA weights stay float32 (keep_lora_float32)
        # transformers refuses bf16 without a GPU unless told the run is on the CPU on purpose
        "use_cpu": bf16 and precision.device == "cpu",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        "report_to": "none",  # MLflow is logged by meddialog.tracking, with our tags and failure handling
        # Under DDP (meddialog.training.launch) every LoRA weight takes part in every step. The Trainer's default for a
        # PEFT model (True) searches the graph for unused ones after each backward pass, which costs time
        # and breaks gradient checkpointing.
        "ddp_find_unused_parameters": False,
        "disable_tqdm": False,
    }


def refuse_data_parallel(config) -> None:
    """One process that sees several GPUs: the Trainer would wrap the model in nn.DataParallel, which
    TRL's trainers refuse with an exception. `python -m meddialog.training.launch` (what dvc.yaml runs) pins one GPU
    for `train.launcher: python`; a stage started by hand gets this line instead."""
    if config.n_gpu > 1:
        raise UserError(f"{config.n_gpu} GPUs are visible to one process: set `train.launcher: torchrun` to train "
                        "on all of them, or run the stage through `python -m meddialog.training.launch` (one GPU), "
                        "or set CUDA_VISIBLE_DEVICES to one GPU")


def keep_lora_float32(trainer) -> int:
    """Cast the trainable (LoRA) weights back to float32; returns how many tensors were cast.

    On a 4-bit model TRL casts every trainable parameter to bfloat16 (the QLoRA paper's setting), so
    the weights and their Adam moments are bf16. bf16 keeps 8 significant bits: at a lora_A entry of
    0.02 (PEFT's init for a 2048-wide layer) one bf16 step is 2^-13 = 1.2e-4, and an Adam update of
    about lr = 1e-5 (the README's GPU recipe for GRPO) is far below half of it, so it rounds away. With
    float32 weights the bf16 autocast still runs the matmuls in bf16. FSDP's flat parameters need one dtype per unit (the 4-bit storage's bf16) and
    DeepSpeed keeps float32 master weights itself, so both are left as they are.
    """
    import torch

    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return 0
    cast = 0
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def lora_change_callback():
    """A TrainerCallback measuring how far training moved the LoRA weights: `lora_A_relative_change`
    (‖A − A₀‖ / ‖A₀‖) and `lora_B_change` (‖B − B₀‖; PEFT starts B at 0), over this process's steps.
    The evidence that updates are not rounded away (keep_lora_float32): 0 means the adapter did not train.
    FSDP's flat parameters carry no LoRA names, so nothing is measured there."""
    from transformers import TrainerCallback

    class LoraChange(TrainerCallback):
        def __init__(self):
            self.start: dict[str, Any] = {}
            self.result: dict[str, float] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.start = {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()
                          if p.requires_grad and ("lora_A" in name or "lora_B" in name)}

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if not self.start:
                return
            now = {name: p.detach().float().cpu() for name, p in model.named_parameters() if name in self.start}
            sums = {"A": [0.0, 0.0], "B": [0.0, 0.0]}  # squared norms of the change and of the start
            for name, start in self.start.items():
                kind = sums["A" if "lora_A" in name else "B"]
                kind[0] += float((now[name] - start).pow(2).sum())
                kind[1] += float(start.pow(2).sum())
            self.result = {"lora_A_relative_change": math.sqrt(sums["A"][0] / max(sums["A"][1], 1e-30)),
                           "lora_B_change": math.sqrt(sums["B"][0])}

    return LoraChange()


def peak_memory_gb(precision: Precision) -> float:
    """Peak memory of this process: CUDA memory allocated on its GPU, or its resident set on the CPU."""
    if precision.device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def last_checkpoint(directory: Path, resume: str) -> str | None:
    """The newest complete checkpoint to resume from, or None to start fresh.

    A run killed while saving leaves a checkpoint directory without trainer_state.json (the
    Trainer writes it last); resuming from it fails, so such directories are skipped. A run whose
    newest checkpoint is its last step (global_step >= max_steps: it finished, and the stage is
    rerun with the same params and data, e.g. after a code edit) starts afresh: the Trainer resumed
    from it takes one step past max_steps (25 of 24), silently changing the adapter; a fresh run
    gives the finished run's result again (deterministic on CPU).
    """
    if resume != "auto" or not directory.is_dir():
        return None
    candidates = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                        key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for candidate in candidates:
        state_file = candidate / "trainer_state.json"
        if not state_file.is_file():
            log.warning("skipping incomplete checkpoint %s (the run was stopped while saving it)", candidate)
            continue
        state = json.loads(state_file.read_text())
        if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
            log.info("%s is the end of a finished run with these params: training again from the start", candidate)
            return None
        log.info("resuming from %s", candidate)
        return str(candidate)
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
