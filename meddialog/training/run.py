"""One training run of the sft or grpo stage, start to finish, around the trainer the stage builds.

A stage's recipe is its data, its model, its TRL config and its trainer. `TrainingRun` does what
every run does the same way around them: the run key, resuming from the last checkpoint, the
MLflow run, timing, and the outputs: models/<stage> (adapter + tokenizer + lineage.json),
metrics/<stage>_history.csv, metrics/<stage>_train.json and metrics/provenance/<stage>_train.json.

Checkpoints live in scratch/checkpoints/<stage>-<run key>/, outside DVC's outputs, so a run killed
half-way resumes from its last checkpoint when rerun (`<stage>.resume: auto`). The run key covers
the params and data the run depends on: changed params start a fresh run instead of resuming
someone else's.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from meddialog import atomic
from meddialog.digests import fingerprint
from meddialog.modeling.loading import write_lineage
from meddialog.modeling.precision import (
    Precision,
    as_record,
    provenance,
    write_provenance,
)
from meddialog.params import GrpoParams, Params, SftParams
from meddialog.paths import BASE_DIR, METRICS_DIR
from meddialog.tracking import flatten, start_run
from meddialog.training.trainer import (
    common_trainer_args,
    effective_batch_size,
    keep_lora_float32,
    lora_change_callback,
    mlflow_callback,
    refuse_data_parallel,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    """What `trainer.train()` left, for the values of the summary that only the stage knows."""

    trainer: Any
    result: Any  # transformers' TrainOutput
    resumed_at: int  # optimizer steps done before this process (0 for a fresh run)
    runtime_s: float  # this process's time in trainer.train()


class TrainingRun:
    """A stage's training run: `configure` its TRL config, then `train` the trainer built on it."""

    def __init__(self, stage: str, params: Params, settings: SftParams | GrpoParams, precision: Precision,
                 key_inputs: tuple[Any, ...]):
        """`settings` is the stage's params section; `key_inputs` what else the run depends on (its
        data records, the adapter it starts from). A checkpoint is resumed only by the same params, data
        and launch (`train`: ZeRO / FSDP checkpoints differ in form)."""
        self.stage = stage
        self.params = params
        self.settings = settings
        self.precision = precision
        self.run_key = fingerprint(params.seed, params.model, params.lora, settings, params.train, *key_inputs)
        self.log = logging.getLogger(stage)
        self._config: Any = None

    def configure(self, config_class: type, **stage_args: Any) -> Any:
        """The TRL config (`config_class`): the arguments both stages share, then the stage's own.

        Built before the model: under torchrun / accelerate this joins the process group and selects
        this process's GPU, which load_model then places the model on (otherwise every process would
        use GPU 0). Several GPUs visible to one process stop here, before any loading.
        """
        config = config_class(**common_trainer_args(self.stage, self.run_key, self.params.seed,
                                                    self.settings.save_steps, self.precision), **stage_args)
        refuse_data_parallel(config)
        self._config = config
        return config

    @property
    def config(self) -> Any:
        if self._config is None:
            raise RuntimeError("TrainingRun.configure() builds the config; call it first")
        return self._config

    @property
    def effective_batch_size(self) -> int:
        """Examples (GRPO: completions) per optimizer step, all processes."""
        return effective_batch_size(self.config)

    def train(self, build_trainer: Callable[[list], Any], *, announcement: str, mlflow_params: dict[str, Any],
              adapter_dir: Path, parents: tuple[Path, ...] = (), lineage: dict[str, Any] | None = None,
              callbacks: tuple = (), evaluate: bool = False, summarize: Callable[[Trained], dict[str, float]],
              history_columns: tuple[str, ...], history_rename: dict[str, str] | None = None) -> dict | None:
        """Train in an MLflow run, resuming the last checkpoint, and write the run's outputs.

        `build_trainer(callbacks)` builds the stage's trainer on `configure`'s config with these
        callbacks (MLflow logging, the stage's `callbacks`, the LoRA change measurement);
        `announcement` is logged once it is built. `evaluate`: the eval loss before and after training
        (the untrained adapter's is step 0 of the history). `summarize` adds the stage's values to the
        summary. Every process trains and saves; the main process writes the metrics and returns the
        summary, the others None.
        """
        config, batch = self.config, self.effective_batch_size
        with start_run(self.stage, self.params.mlflow.experiment) as run:
            run.log_params({**flatten("", self.params), **mlflow_params, "effective_batch_size": batch})
            lora_change = lora_change_callback()
            trainer = build_trainer([mlflow_callback(run), *callbacks, lora_change])
            keep_lora_float32(trainer)
            lora_change.capture(trainer.model)
            self.log.info("%s", announcement)

            resume_from = last_checkpoint(Path(config.output_dir), self.settings.resume)
            resumed_at = steps_done(resume_from)
            eval_start = trainer.evaluate()["eval_loss"] if evaluate else None
            started = time.perf_counter()
            result = trainer.train(resume_from_checkpoint=resume_from)
            runtime = time.perf_counter() - started
            eval_end = trainer.evaluate()["eval_loss"] if evaluate else None

            save_adapter(trainer, adapter_dir, BASE_DIR, parents, stage=self.stage, run_key=self.run_key,
                         **(lineage or {}), precision=as_record(self.precision))
            if not trainer.is_world_process_zero():
                return None
            summary = {"steps": trainer.state.global_step, "resumed_from_step": resumed_at, "train_runtime_s": runtime,
                       "effective_batch_size": batch, "processes": config.world_size,
                       "peak_memory_gb": peak_memory_gb(self.precision), **lora_change.result,
                       **summarize(Trained(trainer, result, resumed_at, runtime))}
            history = trainer.state.log_history
            if evaluate:
                summary.update(eval_loss=eval_end, eval_loss_start=eval_start)
                # train() starts a fresh log history, so the pre-training eval is added back as step 0
                history = [{"step": 0, "epoch": 0.0, "eval_loss": eval_start}, *history]
            write_history(METRICS_DIR / f"{self.stage}_history.csv", history, history_columns, history_rename)
            write_json(METRICS_DIR / f"{self.stage}_train.json", summary)
            write_provenance(f"{self.stage}_train", provenance(self.precision, processes=config.world_size), run)
            run.log_metrics({f"final_{k}": v for k, v in summary.items()})
            if self.params.mlflow.log_models:
                run.log_artifacts(adapter_dir, "adapter")
            return summary


def last_checkpoint(directory: Path, resume: str) -> str | None:
    """The newest complete checkpoint to resume from, or None to start fresh.

    A run killed while saving leaves a checkpoint directory without trainer_state.json (the
    Trainer writes it last); resuming from it fails, so such directories are skipped. A run whose
    newest checkpoint is its last step (global_step >= max_steps: it finished, and the stage is
    rerun with the same params and data, e.g. after a code edit) starts afresh: the Trainer resumed
    from it takes one step past max_steps (25 of 24), silently changing the adapter; a fresh run
    gives the finished run's result again (deterministic on CPU). The finished run's checkpoints are
    deleted first: the Trainer writes over a checkpoint directory in place, so a fresh run killed
    while rewriting checkpoint-2 would leave new weights beside the old trainer_state.json, and the
    old run's last checkpoint would make every rerun start afresh instead of resuming.
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
            for finished in candidates:
                shutil.rmtree(finished)
            return None
        log.info("resuming from %s", candidate)
        return str(candidate)
    return None


def mean_train_loss(log_history: list[dict]) -> float:
    """The run's mean training loss per optimizer step, from its log history (each logged `loss` is the
    mean since the previous log). The Trainer's own `training_loss` averages only the steps of the
    process that returns it, so a resumed run would report the loss of the steps after the kill."""
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / max(steps, 1)


def steps_done(checkpoint: str | None) -> int:
    """Optimizer steps a resumed run had taken before this process (0 for a fresh run), so that
    rates (tokens/s, s/step) count only the work this process did in its runtime."""
    if checkpoint is None:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def peak_memory_gb(precision: Precision) -> float:
    """Peak memory of this process: CUDA memory allocated on its GPU, or its resident set on the CPU."""
    if precision.device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def save_adapter(trainer, out_dir: Path, base_dir: Path, parents: tuple[Path, ...], **details) -> None:
    """Adapter weights (safetensors) + tokenizer + lineage.json into a fresh `out_dir`, which replaces the old
    one only when complete (a kill or a full disk midway leaves the previous adapter or none, never half).

    Every process must call it: under ZeRO-3 or FSDP each holds a shard of the adapter, and
    `save_model` gathers them. Only the main process writes.
    """
    main = trainer.is_world_process_zero()
    with atomic.directory(out_dir, writer=main) as partial:
        trainer.save_model(str(partial))  # the adapter and the trainer's tokenizer
        if main:
            # the Trainer also pickles its arguments there; nothing reads them, and adapters carry no pickles
            (partial / "training_args.bin").unlink(missing_ok=True)
            sort_target_modules(partial / "adapter_config.json")
            write_lineage(partial, base_dir, parents, **details)


def sort_target_modules(config_path: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in string-hash order, which Python
    randomises per process: sorted, the same adapter is the same bytes (and DVC hash) every run."""
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))  # PEFT's own layout


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
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow({k: _fmt(rows[step].get(k)) for k in columns})
    atomic.write_text(path, out.getvalue())


def write_json(path: Path, values: dict[str, float]) -> None:
    atomic.write_json(path, {k: round(float(v), 6) for k, v in values.items()}, sort_keys=True)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
