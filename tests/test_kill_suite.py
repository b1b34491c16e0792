"""tools/kill_suite.py on a one-stage DVC project: it passes a stage that survives a kill, and fails one whose
rerun trusts what the killed run left (the class of bug it exists to find). Its results on the real pipeline
are in docs/reliability.md."""
import json
import sys
import textwrap

import pytest

from tests.conftest import REPO, clone_with_cache, commit, ok, sh
from tools.kill_suite import Entry, belongs_to, differing_parts

# Counts to 5 in out.txt, noting its progress after every line. RESUME=1 continues from the note a killed run
# left, but DVC deletes a stage's outputs before rerunning it, so the resumed run's out.txt lacks the lines
# before the kill; RESUME=0 ignores the note and always gives 0..4.
COUNT = """\
import os
from pathlib import Path

progress = Path("scratch/checkpoints/progress")
start = int(progress.read_text()) if os.environ["RESUME"] == "1" and progress.exists() else 0
progress.parent.mkdir(parents=True, exist_ok=True)
with open("out.txt", "a") as out:
    for i in range(start, 5):
        out.write(f"{i}\\n")
        out.flush()
        progress.write_text(str(i + 1))
progress.unlink()
"""


def counting_project(tmp_path, resume: str):
    root = tmp_path / f"resume-{resume}"
    root.mkdir()
    (root / "count.py").write_text(COUNT)
    (root / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          count:
            cmd: RESUME={resume} python count.py
            deps: [count.py]
            outs: [out.txt]
        """))
    ok(sh("git", "init", "-q", cwd=root))
    ok(sh("dvc", "init", "-q", cwd=root))
    ok(sh("dvc", "repro", cwd=root))
    commit(root, "counted")
    return root


def kill_suite(root, *args):
    report = root.parent / f"{root.name}.json"
    report.unlink(missing_ok=True)
    result = sh(sys.executable, "-m", "tools.kill_suite", "--report", str(report), *args,
                cwd=root, env={"PYTHONPATH": str(REPO)})
    return result, json.loads(report.read_text()) if report.exists() else None


@pytest.mark.slow
def test_the_suite_fails_a_rerun_that_trusts_a_killed_runs_progress(tmp_path):
    # before the 3rd note: lines 0, 1 and 2 are written, the note says 2
    at = "write scratch/checkpoints/progress 3"
    trusting = counting_project(tmp_path, "1")
    result, report = kill_suite(trusting, "--stages", "count", "--at", at)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: 1 kill point(s) failed: count at {at}"
    [point] = report
    assert point["reached"] and point["rerun_rc"] == 0 and point["status_clean"]
    # and dvc.lock records the short out.txt's hash and size
    assert point["differences"] == {"out.txt": "differs in line count",
                                    "dvc.lock": "differs in count.outs.out.txt.md5, count.outs.out.txt.size"}
    assert (trusting / "out.txt").read_text() == "2\n3\n4\n"

    careful = counting_project(tmp_path, "0")
    result, report = kill_suite(careful, "--stages", "count", "--at", at)
    assert result.returncode == 0, result.stdout + result.stderr
    [point] = report
    assert point["reached"] and point["passed"] and point["left"] == []
    assert (careful / "out.txt").read_text() == "0\n1\n2\n3\n4\n"
    assert "1 of 1 kill points passed" in result.stdout


@pytest.mark.slow
def test_drawn_points_are_the_stages_own_writes_and_a_stale_project_is_refused(tmp_path):
    root = counting_project(tmp_path, "0")
    result, report = kill_suite(root, "--stages", "count", "--points", "3", "--moments", "0", "--seed", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    drawn = [p["at"] for p in report]
    assert len(drawn) == 3 and all(at.split()[1] in ("out.txt", "scratch/checkpoints/progress", "dvc.lock")
                                   for at in drawn), drawn
    again = kill_suite(root, "--stages", "count", "--points", "3", "--moments", "0", "--seed", "4")[1]
    assert drawn == [p["at"] for p in again]

    (root / "count.py").write_text(COUNT + "# edited\n")
    result, report = kill_suite(root, "--stages", "count")
    assert result.returncode == 1 and report is None
    assert "dvc status is not clean (count): run `dvc repro` first" in result.stderr


def entry(text: str) -> Entry:
    return Entry(str(hash(text)), tuple(text.splitlines()), None)


def test_differences_are_named_by_json_key_csv_cell_or_line():
    a = entry(json.dumps({"loss": 1.0, "runtime": 3.1, "nested": {"resumed_from_step": None, "x": 1}}))
    b = entry(json.dumps({"loss": 1.0, "runtime": 2.9, "nested": {"resumed_from_step": 2, "x": 2}}))
    assert differing_parts("m.json", a, b) == {"runtime", "resumed_from_step", "nested.x"}
    assert differing_parts("h.csv", entry("step,loss\n1,0.5\n2,0.4"), entry("step,loss\n1,0.5\n2,0.3")) == {"loss@1"}
    assert differing_parts("h.csv", entry("step,loss\n1,0.5"), entry("step,loss\n1,0.5\n2,0.3")) == {"rows or columns"}
    assert differing_parts("card.md", entry("a\nb\nc"), entry("a\nB\nc")) == {"line 2"}
    assert differing_parts("w.bin", Entry("1", None, None), Entry("2", None, None)) == {"bytes"}
    assert differing_parts("m.json", entry("{"), entry("{}")) == {"invalid JSON"}
    lock = "schema: '2.0'\nstages:\n  sft:\n    cmd: python -m stages.sft\n    outs:\n    - path: models/sft\n      md5: {}\n"
    assert differing_parts("dvc.lock", entry(lock.format("a1")), entry(lock.format("b2"))) == {"sft.outs.models/sft.md5"}


def test_a_stages_writes_are_its_outputs_their_partials_checkpoints_and_the_lock():
    outs = ["models/sft", "metrics/sft_train.json"]
    assert belongs_to("models/sft/adapter_model.safetensors", outs)
    assert belongs_to("models/sft.partial/adapter_model.safetensors", outs)
    assert belongs_to("metrics/.sft_train.json.partial", outs)
    assert belongs_to("scratch/checkpoints/sft-1/checkpoint-2/optimizer.pt", outs)
    assert belongs_to("dvc.lock", outs)
    assert not belongs_to("models/sft_other/x", outs) and not belongs_to("metrics/grpo_train.json", outs)


@pytest.mark.slow
def test_the_tiny_pipeline_survives_seeded_kills_in_process_and_sft(tiny_run):
    """The suite on the real stages (a clone of the tiny run): one seeded write each, then `dvc repro`."""
    lab = clone_with_cache(tiny_run, "killed")
    ok(sh("dvc", "repro", cwd=lab))  # models/base, never pushed
    result, report = kill_suite(lab, "--stages", "process", "sft", "--points", "1", "--moments", "0", "--seed", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p["stage"] for p in report] == ["process", "sft"] and all(p["reached"] and p["passed"] for p in report)
    assert "2 of 2 kill points passed" in result.stdout
