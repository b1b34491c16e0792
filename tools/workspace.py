"""A scratch workspace a stage runs in as it would in the repository, for the tools that run real
stages (the bench, the GPU smoke): its own params.yaml, outputs, checkpoints and MLflow store.

    write_params(root, overrides)    root/params.yaml = this repository's, with dotted overrides
    link_inputs(root, paths)         this repository's inputs (data/processed, models/base, ...) linked in
    run_module(module, root, ...)    `python -m <module>` there; its peak memory, a one-line error on failure
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from meddialog.errors import UserError
from meddialog.params import PARAMS_FILE, load_params, set_dotted

CODE_ROOT = Path(__file__).resolve().parents[1]


def write_params(root: Path, overrides: dict[str, Any]) -> None:
    """root/params.yaml: this repository's with `overrides` (dotted keys, as `dvc exp run -S` takes them),
    comments kept, local data sources made absolute so the workspace reads the repository's files.
    A bad override stops here, before anything runs."""
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load(PARAMS_FILE.read_text(encoding="utf-8"))
    set_dotted(params, overrides)
    for source in params["data"]["sources"].values():
        if not source["path"].startswith("hf:"):
            source["path"] = str(Path(source["path"]).resolve())
    target = root / PARAMS_FILE.name
    with target.open("w", encoding="utf-8") as f:
        yaml.dump(params, f)
    load_params(target)


def link_inputs(root: Path, paths: tuple[Path, ...]) -> None:
    """Symbolic links in `root` to this repository's `paths` (relative to the working directory)."""
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(path.resolve())


def run_module(module: str, root: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """`python -m <module> <args>` in `root`, with this checkout's code on PYTHONPATH and an MLflow store of
    its own in `root` (the runs stay out of the user's; DVC_ROOT dropped, as it would point there too).
    Its output goes to root/logs/<module>.log. Returns its peak resident memory in MB; a failure raises
    a UserError with the end of the log."""
    child_env = {**os.environ, "PYTHONPATH": str(CODE_ROOT),
                 "MLFLOW_TRACKING_URI": f"sqlite:///{root.resolve() / 'mlflow.db'}", **(env or {})}
    child_env.pop("DVC_ROOT", None)
    log_file = root / "logs" / f"{module}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", module, *args], cwd=root, env=child_env, stdout=out,
                                 stderr=subprocess.STDOUT)
        # wait4, not getrusage(RUSAGE_CHILDREN): that keeps the peak of every child so far, this of this one
        _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
        raise UserError(f"{module} {' '.join(args)} failed (exit {code}) in {root}; the end of {log_file}:\n{tail}")
    return usage.ru_maxrss / 1024  # kB on Linux
