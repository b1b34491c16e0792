"""How the sft and grpo stages set up TRL's trainers alike: shared arguments, LoRA, callbacks.

A run around the trainer (run key, resume, MLflow, outputs) is meddialog/training/run.py.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from meddialog.errors import UserError
from meddialog.modeling.precision import Precision
from meddialog.params import LoraParams
from meddialog.paths import CHECKPOINT_ROOT


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
    about lr = 1e-5 (the GPU recipe for GRPO, docs/scaling.md) is far below half of it, so it rounds away. With
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
    (‖A − A₀‖ / ‖A₀‖) and `lora_B_change` (‖B − B₀‖; PEFT starts B at 0), from the adapter as built to
    the end of training. The evidence that updates are not rounded away (keep_lora_float32): 0 means the
    adapter did not train. `capture(model)` takes A₀ and B₀ once the trainer is built, before `train()`:
    a resumed run has loaded its checkpoint by the time training begins, while the freshly built
    adapter is the seeded one the run started from. FSDP's flat parameters carry no LoRA names, so
    nothing is measured there."""
    from transformers import TrainerCallback

    class LoraChange(TrainerCallback):
        def __init__(self):
            self.start: dict[str, Any] = {}
            self.result: dict[str, float] = {}

        def capture(self, model) -> None:
            self.start = {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()
                          if p.requires_grad and ("lora_A" in name or "lora_B" in name)}

        def on_train_end(self, args, state, control, model=None, **kwargs):
            now = {name: p.detach().float().cpu() for name, p in model.named_parameters() if name in self.start}
            if not now:
                return
            sums = {"A": [0.0, 0.0], "B": [0.0, 0.0]}  # squared norms of the change and of the start
            for name, value in now.items():
                start = self.start[name]
                kind = sums["A" if "lora_A" in name else "B"]
                kind[0] += float((value - start).pow(2).sum())
                kind[1] += float(start.pow(2).sum())
            self.result = {"lora_A_relative_change": math.sqrt(sums["A"][0] / max(sums["A"][1], 1e-30)),
                           "lora_B_change": math.sqrt(sums["B"][0])}

    return LoraChange()


def mlflow_callback(run):
    """A TrainerCallback that sends every numeric log value to MLflow as it happens."""
    from transformers import TrainerCallback

    class MlflowLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                run.log_metrics({k.replace("/", "_"): float(v) for k, v in logs.items()
                                 if isinstance(v, (int, float)) and math.isfinite(float(v))}, step=state.global_step)

    return MlflowLogger()


def lora_config(lora: LoraParams):
    """PEFT's LoraConfig from `lora.*`; TRL applies it through `peft_config=`."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def effective_batch_size(config) -> int:
    """Examples (GRPO: completions) per optimizer step over all processes: batch × accumulation × processes."""
    return config.per_device_train_batch_size * config.gradient_accumulation_steps * config.world_size
