"""Whether vLLM is usable from here, and why not: `make vllm-check` (`python -m meddialog.vllm.environment`).

Imports vLLM in its own interpreter (`vllm.python`), the way the server will, and names the
known failures with their fix: no environment yet, the PyPI torchvision that does not match the
CPU torch build, and anything else by the last line of its error. Exit code 0 when usable.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError
from meddialog.params import load_params

PROBE = """
import json, torch, transformers, vllm
from vllm.platforms import current_platform
print(json.dumps({"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                  "platform": current_platform.device_type}))
"""

# the known ways an install goes wrong, by a fragment of the error, and what fixes each
KNOWN_FAILURES = {
    "torchvision::nms": "torchvision does not match the CPU torch build; `make setup-vllm` installs without it: "
                        "`pip uninstall -y torchvision torchaudio torchcodec` in that environment",
    "No module named 'vllm'": "vLLM is not installed in this interpreter: `make setup-vllm`",
}


@dataclass(frozen=True)
class VllmStatus:
    python: Path
    usable: bool
    versions: dict[str, str]
    reason: str = ""

    def describe(self) -> str:
        if self.usable:
            v = self.versions
            return (f"vLLM {v['vllm']} usable ({v['platform']} platform, torch {v['torch']}, transformers "
                    f"{v['transformers']}) in {self.python}")
        return f"vLLM is not usable from {self.python}: {self.reason}"


def check(python: Path, timeout_s: float = 300.0) -> VllmStatus:
    python = Path(python)
    if not python.is_file():
        return VllmStatus(python, False, {}, "no such interpreter: create vLLM's environment with `make setup-vllm`")
    try:
        result = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return VllmStatus(python, False, {}, f"importing vllm took over {timeout_s:g} s")
    if result.returncode != 0:
        for fragment, fix in KNOWN_FAILURES.items():
            if fragment in result.stderr:
                return VllmStatus(python, False, {}, fix)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return VllmStatus(python, False, {}, f"importing vllm failed: {last}")
    return VllmStatus(python, True, json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meddialog.vllm.environment", description=__doc__.split("\n")[0])
    parser.add_argument("--python", type=Path, help="vLLM's interpreter (default: vllm.python in params.yaml)")
    args = parser.parse_args(argv)
    status = check(args.python or Path(load_params().vllm.python))
    if not status.usable:
        raise UserError(status.describe())
    print(status.describe())


if __name__ == "__main__":
    cli.run(main)
