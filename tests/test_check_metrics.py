"""`dvc metrics diff` skips a missing metrics file silently; tools.check_metrics must not."""
import json
import shutil

import pytest

from tests.conftest import REPO, run_stage
from tools.check_metrics import check, declared_metrics


@pytest.fixture
def workspace(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(REPO / "metrics", tmp_path / "metrics")
    return tmp_path


def test_committed_results_pass(workspace):
    assert {"metrics/baseline.json", "metrics/sft.json", "metrics/grpo.json", "metrics/comparison.json",
            "metrics/data.json"} <= set(declared_metrics(workspace / "dvc.yaml"))
    assert check(workspace) == []


def test_missing_unreadable_and_non_numeric_files_are_named(workspace):
    (workspace / "metrics" / "sft.json").unlink()
    (workspace / "metrics" / "grpo.json").write_text("{not json")
    (workspace / "metrics" / "data.json").write_text(json.dumps({"kept": 3, "note": "text", "flag": True}))
    problems = "\n".join(check(workspace))
    assert "metrics/sft.json: missing" in problems
    assert "metrics/grpo.json: not valid JSON" in problems
    assert "metrics/data.json: not a finite number: flag, note" in problems


def test_models_must_share_keys(workspace):
    sft = json.loads((workspace / "metrics" / "sft.json").read_text())
    del sft["rougeL"]
    (workspace / "metrics" / "sft.json").write_text(json.dumps(sft))
    assert check(workspace) == ["metrics/sft.json: lacks rougeL (the other models have them)"]


def test_command_fails_with_the_reason(workspace):
    (workspace / "metrics" / "baseline.json").unlink()
    result = run_stage("tools.check_metrics", workspace)
    assert result.returncode == 1
    assert "metrics/baseline.json: missing" in result.stderr and "Traceback" not in result.stderr


def test_nested_metrics_are_checked_leaf_by_leaf(workspace):
    (workspace / "metrics" / "data.json").write_text(json.dumps({"base": {"task": {"acc": 0.4, "name": "x"}}, "n": 1}))
    (problem,) = check(workspace)
    assert problem.endswith("metrics/data.json: not a finite number: base.task.name")
