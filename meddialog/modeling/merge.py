"""Merging a chain of LoRA adapters into full-precision weights, in a CPU process of its own.

    python -m meddialog.modeling.merge --base models/base --adapter models/sft --dtype bfloat16 --out scratch/merged/x

Used where the merged weights cannot be made in the process that needs them: a 4-bit run (merging
into NF4 weights re-quantizes them and rounds the LoRA delta away, peft#2321), ZeRO-3 (the loading
process's weights are partitioned), and verl's GRPO start (verl loads a model directory). A process of
its own, on the CPU: the training process never holds the full-precision copy (a 3B model in bfloat16
is 6 GB), no GPU memory is taken while a trainer or vLLM starts, and the distributed environment of
torchrun / accelerate / DeepSpeed does not reach it.

`merged_dir` caches results in scratch/merged/<key>/ (the key: base identity, adapter bytes, dtype),
so the grpo stage and the eval of its adapter merge the SFT chain once; a file lock lets one process
of a multi-process run build it while the others wait. The newest KEEP merges are kept.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from meddialog import atomic, cli
from meddialog.errors import UserError
from meddialog.paths import MERGED_ROOT

log = logging.getLogger("merge")

COMPLETE = "merge.json"  # written last: a directory without it is an interrupted merge
KEEP = 2
CODE_ROOT = Path(__file__).resolve().parents[2]


def merged_dir(base_dir: Path, adapters: tuple[Path, ...], dtype: str, trust_remote_code: bool = False) -> Path:
    """A model directory holding `base_dir` with `adapters` merged in `dtype` (built once, then reused)."""
    from filelock import FileLock

    from meddialog.digests import fingerprint

    key = fingerprint(_identity(Path(base_dir)), [_identity(Path(a)) for a in adapters], dtype)
    out = MERGED_ROOT / key
    MERGED_ROOT.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / COMPLETE).is_file():
            merge_in_subprocess(base_dir, adapters, dtype, out, trust_remote_code)
            _prune(keep=out)
    return out


def merge_in_subprocess(base_dir: Path, adapters: tuple[Path, ...], dtype: str, out_dir: Path,
                        trust_remote_code: bool = False) -> None:
    """Run `python -m meddialog.modeling.merge` on the CPU; `out_dir` appears complete or not at all."""
    argv = [sys.executable, "-m", "meddialog.modeling.merge", "--base", str(base_dir), "--dtype", dtype, "--out", str(out_dir)]
    for adapter in adapters:
        argv += ["--adapter", str(adapter)]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    # no GPU, and none of the launcher's process-group variables: a standalone CPU process
    dropped = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("ACCELERATE_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    log.info("merging %s in %s on the CPU", " + ".join(map(str, (base_dir, *adapters))), dtype)
    result = subprocess.run(argv, env=env, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"merging {' + '.join(map(str, (base_dir, *adapters)))} failed: {last}")


def merge_chain(base_dir: Path, adapters: tuple[Path, ...], dtype: str, out_dir: Path,
                trust_remote_code: bool = False) -> None:
    """In this process, on the CPU: load `base_dir` in `dtype`, merge each adapter, save to `out_dir`."""
    from transformers import AutoTokenizer

    model = merged_model(base_dir, adapters, dtype, trust_remote_code)
    with atomic.directory(out_dir) as partial:  # renamed when complete: a kill leaves no half model
        model.save_pretrained(partial, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_dir, trust_remote_code=trust_remote_code).save_pretrained(partial)
        record = {"base_model": str(base_dir), "adapters": [str(a) for a in adapters], "dtype": dtype}
        atomic.write_json(partial / COMPLETE, record, sort_keys=True)


def merged_model(base_dir: Path, adapters: tuple[Path, ...], dtype: str, trust_remote_code: bool = False):
    """`base_dir` loaded on the CPU in `dtype` (full precision: never 4-bit), each adapter merged in order."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True, dtype=getattr(torch, dtype),
                                                 trust_remote_code=trust_remote_code)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model


def _identity(path: Path) -> list:
    """What makes a base or an adapter itself: its config files, and its weight files' contents; for a
    pipeline base (with a source.json: gigabytes on a GPU recipe), their sizes and modification times,
    so a rebuilt models/base is merged afresh without hashing it."""
    from meddialog.digests import file_digest

    if not path.is_dir():
        raise UserError(f"{path} does not exist (run `dvc repro` or `dvc pull` first)")
    parts: list = [path.name]
    for name in ("source.json", "config.json", "adapter_config.json"):
        if (path / name).is_file():
            parts.append((name, (path / name).read_text()))
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise UserError(f"{path} holds no .safetensors weights (weights are never read from pickles)")
    by_source = (path / "source.json").is_file()
    for file in weights:
        stat = file.stat()
        parts.append((file.name, stat.st_size, stat.st_mtime_ns if by_source else file_digest(file)))
    return parts


def _prune(keep: Path) -> None:
    done = sorted((p for p in MERGED_ROOT.iterdir() if (p / COMPLETE).is_file() and p != keep),
                  key=lambda p: (p / COMPLETE).stat().st_mtime, reverse=True)
    for old in done[KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)
        Path(str(old) + ".lock").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meddialog.modeling.merge", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--adapter", action="append", default=[], type=Path, help="in order; repeat for a chain")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    merge_chain(args.base, tuple(args.adapter), args.dtype, args.out, args.trust_remote_code)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    cli.run(main)
