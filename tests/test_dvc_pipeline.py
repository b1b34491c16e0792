"""DVC for real, in a scratch git repository made from this checkout's files."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def sh(*args, cwd):
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": ""}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def scratch_repo(tmp_path):
    """Tracked and not-ignored files of this checkout, committed in a new git repository."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tmp_path / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "scratch"]):
        assert sh(*cmd, cwd=tmp_path).returncode == 0
    return tmp_path


def test_repro_process_twice_runs_nothing_the_second_time(scratch_repo):
    first = sh("dvc", "repro", "process", cwd=scratch_repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'download'" in first.stdout and "Running stage 'process'" in first.stdout
    second = sh("dvc", "repro", "process", cwd=scratch_repo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout


def test_dag_shows_the_whole_pipeline_in_order(scratch_repo):
    dag = sh("dvc", "dag", "--md", cwd=scratch_repo)
    assert dag.returncode == 0
    names = dict(re.findall(r'(node\d+)\["([^"]+)"\]', dag.stdout))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag.stdout)}
    assert set(names.values()) == {"download", "process", "base_model", "baseline", "sft", "grpo", "eval"}
    assert {("download", "process"), ("process", "baseline"), ("base_model", "baseline"), ("base_model", "sft"),
            ("process", "sft"), ("sft", "grpo"), ("grpo", "eval"), ("baseline", "eval")} <= edges
