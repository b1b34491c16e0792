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


PRECISION_PARAMS = {"model.load_in_4bit", "model.dtype"}


def declared_params(stage: dict) -> set[str]:
    return {p for p in stage.get("params", []) if isinstance(p, str)}


def covers(declared: set[str], key: str) -> bool:
    """`key` or a section above it (`model` covers `model.dtype`) is declared."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


@pytest.mark.parametrize("stage", stages())
def test_stages_that_load_a_model_depend_on_how_it_is_loaded(stage):
    """A model's precision and remote code change every number a stage produces from it: a change of
    model.load_in_4bit must rerun baseline and eval too, not leave their metrics stale."""
    modules = modules_run_by(stage["cmd"])
    declared = declared_params(stage)
    if "modeling" in modules:
        assert covers(declared, "model.trust_remote_code"), "add model.trust_remote_code to params"
    if modules & {"evaluation", "training"}:
        missing = sorted(k for k in PRECISION_PARAMS if not covers(declared, k))
        assert not missing, f"add to params: {', '.join(missing)}"


def test_baseline_and_eval_list_the_precision_params():
    main = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("baseline", "eval", "sft", "grpo"):
        assert PRECISION_PARAMS | {"model.trust_remote_code"} <= declared_params(main[name]), name
