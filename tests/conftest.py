"""Shared fixtures: scratch project directories and a way to run stages as users do."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]


def run_stage(name: str, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m stages.<name>` in `cwd`, the way dvc.yaml runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def write_params(project: Path, **overrides) -> None:
    """Copy params.yaml into `project`, applying dotted-key overrides like `dvc exp run -S`."""
    yaml = YAML()
    params = yaml.load((REPO / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    with (project / "params.yaml").open("w") as f:
        yaml.dump(params, f)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project: params.yaml and the embedded sample, nothing else."""
    shutil.copytree(REPO / "data" / "sample", tmp_path / "data" / "sample")
    write_params(tmp_path)
    return tmp_path
