"""Runs the sft or grpo stage as one process, or as one process per GPU through torchrun or accelerate.

    python -m meddialog.training.launch sft                  # what dvc.yaml runs; `train.*` in params.yaml decides how
    python -m meddialog.training.launch sft --dry-run        # print the command it would run, and run nothing
    dvc exp run -S train.launcher=torchrun -S train.nproc_per_node=2
    dvc exp run -S train.launcher=accelerate -S train.accelerate_config=zero2

`train.launcher: python` runs `python -m stages.<stage>`, exactly what the stage is without this module.
torchrun and accelerate start `train.nproc_per_node` copies of it on this machine (auto = one per GPU
that CUDA_VISIBLE_DEVICES leaves visible); accelerate uses configs/accelerate/<train.accelerate_config>.yaml.
The launcher replaces this process (exec), so its exit code and Ctrl-C reach DVC unchanged. Every copy
reads params.yaml itself; only the main one writes models/, metrics/ and the MLflow run.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shlex
import sys
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError
from meddialog.params import TrainParams, load_params, read_yaml

log = logging.getLogger("launch")

STAGES = ("sft", "grpo")
CONFIG_DIR = Path("configs/accelerate")
# Sharded configs need a GPU, and DeepSpeed a package only multi-GPU users want (not in requirements.txt).
GPU_ONLY = {"DEEPSPEED", "FSDP"}
PACKAGES = {"DEEPSPEED": ("deepspeed", "deepspeed==0.19.8")}


def visible_gpus() -> int:
    """CUDA devices torch can see, CUDA_VISIBLE_DEVICES applied (0 on a CPU-only machine or torch build)."""
    import torch

    return torch.cuda.device_count()


def command(stage: str, train: TrainParams, nproc: int) -> list[str]:
    """The command line that runs `stage` under train.launcher with `nproc` processes."""
    module = ["-m", f"stages.{stage}"]
    if train.launcher == "python":
        return [sys.executable, *module]
    if train.launcher == "torchrun":
        # --standalone: a local rendezvous on a free port, so two runs on one machine do not collide
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(train)),
            f"--num_processes={nproc}", *module]


def accelerate_config(train: TrainParams) -> Path:
    return CONFIG_DIR / f"{train.accelerate_config}.yaml"


def check_machine(train: TrainParams, nproc: int, gpus: int) -> None:
    """Refuse, in one line, what would otherwise fail inside every process: a missing package or GPU."""
    if train.launcher == "accelerate":
        kind = read_yaml(accelerate_config(train))["distributed_type"]
        module, pin = PACKAGES.get(kind, (None, None))
        needs = []
        if kind in GPU_ONLY and gpus == 0:
            needs.append("CUDA GPUs (none is visible here; for a CPU run use train.launcher=torchrun)")
        if module and importlib.util.find_spec(module) is None:
            needs.append(f"`pip install {pin}`")
        if needs:
            raise UserError(f"train.accelerate_config={train.accelerate_config} needs {' and '.join(needs)}")
    if gpus and nproc > gpus:
        raise UserError(f"train.nproc_per_node={nproc} but only {gpus} GPU(s) are visible "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def single_process_device(visible: str | None, gpus: int) -> str | None:
    """The CUDA_VISIBLE_DEVICES value that leaves one process a single GPU (None: nothing to pin).

    With several GPUs visible and no distributed launcher, the Trainer would wrap the model in
    nn.DataParallel, which TRL's trainers refuse. `visible` is CUDA_VISIBLE_DEVICES as set (indices or
    GPU UUIDs, or unset: all), `gpus` the number torch sees; the first visible one is kept."""
    if gpus <= 1:
        return None
    listed = [d.strip() for d in (visible or "").split(",") if d.strip()]
    return listed[0] if listed else "0"


def child_env(train: TrainParams, nproc: int, gpus: int) -> dict[str, str]:
    env = dict(os.environ)
    if train.launcher == "python":
        pinned = single_process_device(env.get("CUDA_VISIBLE_DEVICES"), gpus)
        if pinned is not None:
            log.info("train.launcher is python: training on one GPU (CUDA_VISIBLE_DEVICES=%s) of the %d visible; "
                     "set train.launcher=torchrun to use all of them", pinned, gpus)
            env["CUDA_VISIBLE_DEVICES"] = pinned
    if nproc > 1 and gpus == 0:
        # Without it the Trainer's accelerate state ignores the process group on a CPU-only machine and
        # every process trains alone, each writing its own adapter; with it they form one DDP run over gloo.
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meddialog.training.launch", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--dry-run", action="store_true", help="print the command and run nothing")
    args = parser.parse_args(argv)
    train = load_params().train
    gpus = visible_gpus()
    nproc = 1 if train.launcher == "python" else max(gpus, 1) if train.nproc_per_node == "auto" \
        else train.nproc_per_node
    launch = command(args.stage, train, nproc)
    if args.dry_run:
        print(shlex.join(launch))
        return
    check_machine(train, nproc, gpus)
    log.info("running %s", shlex.join(launch))
    os.execve(launch[0], launch, child_env(train, nproc, gpus))


if __name__ == "__main__":
    cli.run(main)
