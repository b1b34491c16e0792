"""Every stage lists as deps the project modules it runs, so `dvc repro` reruns it when one changes.

A stage runs `python -m stages.<module>` (or `meddialog.training.launch <module>`); the modules it needs
are those imports of `stages.*` and `meddialog.*`, followed transitively. Left out by convention:
meddialog's cli, errors, params, paths and tracking (the command line, error type, params loading, the
locations of data and models, and MLflow logging, which do not change what a stage computes; params
changes reach stages through their `params:` sections, and the locations are dvc.yaml's own deps and outs).
Their own imports are not followed either: params reads the reward registry's names to check grpo.rewards
in every stage, while the stages that compute rewards import meddialog.training.rewards themselves.
"""
import re

import pytest
import yaml

from tests.conftest import REPO
from tests.imports import imported_modules

NOT_DEPS = {"meddialog.cli", "meddialog.errors", "meddialog.params", "meddialog.paths", "meddialog.tracking"}
PIPELINES = ("dvc.yaml", "pipelines/verl/dvc.yaml")
def modules_run_by(command: str) -> set[str]:
    seen: set[str] = set()
    entry = re.search(r"python -m ([\w.]+)(?: (\w+))?", command)
    pending = [entry.group(1)] + ([f"stages.{entry.group(2)}"] if entry.group(2) else [])
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            if module not in NOT_DEPS:
                pending.extend(imported_modules(module))
    return seen


def listed_modules(deps: list[str]) -> set[str]:
    """Dotted names of the .py deps; a folder dep covers every module below it."""
    found = set()
    for dep in deps:
        path = REPO / dep
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path] if dep.endswith(".py") else []
        found |= {".".join(f.relative_to(REPO).with_suffix("").parts) for f in files}
    return found


def stages():
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load((REPO / pipeline).read_text())["stages"].items():
            yield pytest.param(stage, id=f"{pipeline}:{name}")


@pytest.mark.parametrize("stage", stages())
def test_stage_deps_cover_the_modules_it_runs(stage):
    assert len(set(stage["deps"])) == len(stage["deps"]), "a dep is listed twice (DVC then locks it twice)"
    missing = modules_run_by(stage["cmd"]) - NOT_DEPS - listed_modules(stage["deps"])
    assert not missing, f"add to deps: {', '.join(m.replace('.', '/') + '.py' for m in sorted(missing))}"


def test_the_import_walk_finds_nested_imports():
    # grpo imports these inside main(); modeling imports hub inside a function
    assert {"meddialog.modeling.generation", "meddialog.data.conversations", "meddialog.training.trainer",
            "meddialog.training.rewards"} <= imported_modules("stages.grpo")
    assert "meddialog.hub" in modules_run_by("python -m meddialog.training.launch grpo")


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
    if "meddialog.modeling.loading" in modules:
        assert covers(declared, "model.trust_remote_code"), "add model.trust_remote_code to params"
    if modules & {"meddialog.evaluation.evaluate", "meddialog.training.trainer"}:
        missing = sorted(k for k in PRECISION_PARAMS if not covers(declared, k))
        assert not missing, f"add to params: {', '.join(missing)}"


def test_baseline_and_eval_list_the_precision_params():
    main = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("baseline", "eval", "sft", "grpo"):
        assert PRECISION_PARAMS | {"model.trust_remote_code"} <= declared_params(main[name]), name
