"""Prepare the GPU check for a GPU machine without network (`make gpu-smoke-bundle`).

    python -m tools.gpu_bundle                 # writes scratch/gpu-bundle/ (about 50 MB)
    bash scratch/gpu-bundle/run.sh              # on the GPU machine, from the repository root

For a machine that already has Python 3.12 with a CUDA torch, transformers, peft and accelerate but
cannot install anything: the wheels the recipe needs beyond those (bitsandbytes, trl, datasets and
their small dependencies, the reward/params libraries), at the versions requirements.txt pins, built
for CPython 3.12 on x86-64 Linux; and the embedded model's tokenizer files (the 93 MB model wheel and
the 538 MB models/base are too large to carry, so run.sh checks a random model of Qwen2.5-0.5B's shape).
run.sh installs the wheels, prints `tools.gpu_check`, runs `tools.gpu_smoke` and copies the report
to $OUT when that is set.
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError

log = logging.getLogger("gpu_bundle")

OUT_DIR = Path("scratch/gpu-bundle")
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
# wheels for the GPU machine; the versions come from requirements.txt
WHEELS = ("bitsandbytes", "trl", "datasets", "dill", "multiprocess", "ruamel.yaml", "nltk", "defusedxml")
SDISTS = ("rouge_score",)  # published as a source archive only: built into a (pure-Python) wheel here
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
          "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux2014_x86_64"]

RUN_SH = """#!/usr/bin/env bash
# The GPU check on a machine without network; written by `python -m tools.gpu_bundle`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=scratch/gpu-bundle
python3 -m pip install --quiet --no-index --no-deps "$bundle"/wheels/*.whl
python3 -m tools.gpu_check || true     # what is there; the smoke's probe stops the run if it is not enough
status=0
python3 -m tools.gpu_smoke --base qwen2.5-0.5b-shape --tokenizer "$bundle/tokenizer" "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -f scratch/gpu-smoke/report.json ]; then cp scratch/gpu-smoke/report.json "$OUT/"; fi
exit $status
"""


def pinned(names: tuple[str, ...]) -> list[str]:
    """`name==version` for each name, as requirements.txt pins it (names compared as pip does)."""
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[_normal(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    missing = [n for n in names if _normal(n) not in pins]
    if missing:
        raise UserError(f"requirements.txt pins no {', '.join(missing)}")
    return [pins[_normal(n)] for n in names]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet"], stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line] or result.stderr.splitlines()[-1:]
        raise UserError(f"pip {args[0]} failed: {errors[0] if errors else 'no output'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    from tools.gpu_smoke import embedded_tokenizer

    shutil.rmtree(args.out, ignore_errors=True)
    wheels = args.out / "wheels"
    pip("download", "--no-deps", "--only-binary=:all:", *TARGET, "-d", str(wheels), *pinned(WHEELS))
    pip("wheel", "--no-deps", "-w", str(wheels), *pinned(SDISTS))
    embedded_tokenizer(args.out / "tokenizer")
    (args.out / "run.sh").write_text(RUN_SH)
    (args.out / "run.sh").chmod(0o755)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): on the GPU machine run `bash {args.out}/run.sh` from the repository root")


if __name__ == "__main__":
    cli.run(main)
