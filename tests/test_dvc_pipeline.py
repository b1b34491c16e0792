"""DVC for real, in a scratch git repository made from this checkout's files."""
import re

import pytest

from tests.conftest import sh

pytestmark = pytest.mark.slow


def test_repro_process_twice_runs_nothing_the_second_time(scratch_repo):
    first = sh("dvc", "repro", "process", cwd=scratch_repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'download'" in first.stdout and "Running stage 'process'" in first.stdout
    second = sh("dvc", "repro", "process", cwd=scratch_repo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout


def test_dag_shows_the_whole_pipeline_in_order(scratch_repo):
    dag = sh("dvc", "dag", "--md", "dvc.yaml", cwd=scratch_repo)  # the main pipeline, not pipelines/verl
    assert dag.returncode == 0
    names = dict(re.findall(r'(node\d+)\["([^"]+)"\]', dag.stdout))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag.stdout)}
    assert set(names.values()) == {"download", "process", "base_model", "baseline", "sft", "grpo", "eval", "export",
                                   "gguf", "safety", "knowledge", "judge", "report"}
    assert {("download", "process"), ("process", "baseline"), ("base_model", "baseline"), ("base_model", "sft"),
            ("process", "sft"), ("sft", "grpo"), ("grpo", "eval"), ("baseline", "eval"), ("eval", "export"),
            ("grpo", "export"), ("export", "gguf"), ("grpo", "safety"), ("grpo", "knowledge"), ("eval", "judge"),
            ("eval", "report"), ("safety", "report"), ("knowledge", "report"), ("judge", "report")} <= edges
