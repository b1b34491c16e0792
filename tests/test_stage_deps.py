"""Every stage lists as deps the project modules it runs, so `dvc repro` reruns it when one changes.

A stage runs `python -m stages.<module>` (or `stages.launch <module>`); the modules it needs are those
imports, followed transitively. Left out by convention: cli, errors, params and tracking (the command
line, error type, params loading and MLflow logging, which do not change what a stage computes; params
changes reach stages through their `params:` sections).
"""
import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

NOT_DEPS = {"cli", "errors", "params", "tracking"}
PIPELINES = ("dvc.yaml", "pipelines/verl/dvc.yaml")


def imported_modules(module: str) -> set[str]:
    """The stages.* modules `module` imports (at module level or inside functions)."""
    tree = ast.parse((REPO / "stages" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("stages.")}
    return found


def modules_run_by(command: str) -> set[str]:
    seen: set[str] = set()
    pending = [name for pair in re.findall(r"stages\.(\w+)(?: (\w+))?", command) for name in pair if name]
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(imported_modules(module))
    return seen


def stages():
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load((REPO / pipeline).read_text())["stages"].items():
            yield pytest.param(stage, id=f"{pipeline}:{name}")


@pytest.mark.parametrize("stage", stages())
def test_stage_deps_cover_the_modules_it_runs(stage):
    assert len(set(stage["deps"])) == len(stage["deps"]), "a dep is listed twice (DVC then locks it twice)"
    listed = {Path(dep).stem for dep in stage["deps"] if dep.startswith("stages/")}
    missing = modules_run_by(stage["cmd"]) - NOT_DEPS - listed
    assert not missing, f"add to deps: {', '.join(f'stages/{m}.py' for m in sorted(missing))}"


def test_the_import_walk_finds_nested_imports():
    # grpo imports these inside main(); modeling imports hub inside a function
    assert {"generation", "conversations", "training", "rewards"} <= imported_modules("grpo")
    assert "hub" in modules_run_by("python -m stages.launch grpo")
