"""The experiment workflow on the tiny pipeline, as a user types it: status after a param edit,
`dvc exp run -S`, a queue of two, `dvc exp show` (the recipe of docs/experiments.md) and `dvc metrics diff`."""
import csv
import io
import json
import re
import time

import pytest

from tests.conftest import clone_with_cache, mlflow_runs, ok, set_params, sh

pytestmark = pytest.mark.slow

HIGH_LR = 5e-2  # high enough that the tiny model's two SFT steps change its greedy answers
SHOW_RECIPE = ["--drop", ".*", "--keep",
               r"Experiment|Created|sft\.lr|grpo\.lr|metrics/(baseline|sft|grpo)\.json:(rougeL|bleu|similarity)"]


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def stale(repo) -> set[str]:
    """Stages of the main pipeline `dvc status` reports (the optional verl stages report 'not run')."""
    status = json.loads(ok(sh("dvc", "status", "--json", cwd=repo)).stdout)
    return {name for name in status if not name.startswith("pipelines/verl/")}


@pytest.fixture(scope="module")
def lab(tiny_run):
    """A clone of the tiny run, as after `dvc pull`; `dvc repro` rebuilds only models/base (never pushed)."""
    clone = clone_with_cache(tiny_run, "lab")
    assert ran(ok(sh("dvc", "repro", cwd=clone)).stdout) == {"base_model"}
    return clone


def test_status_names_exactly_the_stale_stages_and_a_noop_repro_runs_nothing(lab):
    assert stale(lab) == set()
    # status names the stages whose own inputs changed (their results then make the next ones stale)
    # (export too: its model card states the training params)
    set_params(lab, **{"grpo.beta": 0.1})
    assert stale(lab) == {"grpo", "export"}
    set_params(lab, **{"sft.lr": 1e-3})
    assert stale(lab) == {"sft", "grpo", "export"}
    ok(sh("git", "checkout", "params.yaml", cwd=lab))
    assert stale(lab) == set()
    noop = ok(sh("dvc", "repro", cwd=lab)).stdout
    assert ran(noop) == set() and "Data and pipelines are up to date" in noop


def test_exp_run_reruns_only_the_stages_after_training_and_metrics_diff_has_both_sides(lab):
    run = ok(sh("dvc", "exp", "run", "-n", "lr-high", "-S", f"sft.lr={HIGH_LR}", cwd=lab))
    # everything downstream of the adapters, never download, process, baseline or base_model
    assert ran(run.stdout) == {"sft", "grpo", "eval", "safety", "knowledge", "judge", "report", "export", "gguf"}
    # a commit against the workspace (which now holds the experiment's results)
    diff = json.loads(ok(sh("dvc", "metrics", "diff", "HEAD", "--all", "--json", cwd=lab)).stdout)
    for model in ("baseline", "sft", "grpo"):
        assert {"bleu", "rouge1", "rouge2", "rougeL", "similarity", "answer_words_mean"} <= set(diff[f"metrics/{model}.json"])
    assert diff["metrics/sft_train.json"]["eval_loss"]["diff"] != 0  # another learning rate, another loss
    assert diff["metrics/baseline.json"]["rougeL"]["diff"] == 0  # the baseline was not rerun
    ok(sh("git", "checkout", "--", ".", cwd=lab))
    ok(sh("dvc", "checkout", "dvc.yaml", cwd=lab))


def test_compare_reads_an_experiment_against_head_without_a_checkout(lab):
    """tools.compare HEAD lr-high (the experiment above): both sides' sft predictions come from the DVC cache,
    the workspace stays as it is, and side A's and B's means are those each side's metrics/sft.json holds."""
    before = ok(sh("git", "status", "--porcelain", cwd=lab)).stdout
    result = ok(sh("python", "-m", "tools.compare", "HEAD", "lr-high", "--model", "sft", "--resamples", "1000",
                   "--top", "2", cwd=lab))
    assert ok(sh("git", "status", "--porcelain", cwd=lab)).stdout == before
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sft: lr-high − HEAD on the 4 conversations both scored"), result.stdout
    table = {line.split()[0]: line.split() for line in lines[2:8]}
    assert set(table) == {"bleu", "sentence_bleu", "rouge1", "rouge2", "rougeL", "similarity"}, result.stdout
    head = json.loads((lab / "metrics" / "sft.json").read_text())
    shown = list(csv.DictReader(io.StringIO(ok(sh("dvc", "exp", "show", "--csv", "--drop", ".*", "--keep",
                                                   r"Experiment|metrics/sft\.json:rougeL", cwd=lab)).stdout)))
    experiment = next(row for row in shown if row["Experiment"] == "lr-high")
    a, b, difference = (float(v) for v in table["rougeL"][1:4])
    assert a == pytest.approx(head["rougeL"], abs=1e-4)
    assert b == pytest.approx(float(experiment["metrics/sft.json:rougeL"]), abs=1e-4)
    assert difference == pytest.approx(b - a, abs=2e-4)
    assert "answers that changed most" in result.stdout and result.stdout.count("\n[") == 2

    unknown = sh("python", "-m", "tools.compare", "HEAD", "no-such-experiment", cwd=lab)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().splitlines()[-1].endswith("(`dvc exp list` names them)")


def test_queued_experiments_run_and_log_to_the_main_store(lab):
    # up to eval (the stages after it ran in the exp-run test above): the queue's machinery is the same, at
    # half the cost of two whole pipelines
    queued = ok(sh("dvc", "exp", "run", "--queue", "-S", "sft.lr=5e-5,2e-4", "eval", cwd=lab)).stdout
    assert queued.count("Queued experiment") == 2, queued
    ok(sh("dvc", "queue", "start", cwd=lab))
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", ok(sh("dvc", "queue", "status", cwd=lab)).stdout):
        assert time.monotonic() < deadline, sh("dvc", "queue", "status", cwd=lab).stdout
        time.sleep(3)
    status = ok(sh("dvc", "queue", "status", cwd=lab)).stdout
    assert status.count("Success") == 2, status + sh("dvc", "queue", "logs", "-e", cwd=lab).stdout

    rows = list(csv.DictReader(io.StringIO(ok(sh("dvc", "exp", "show", "--csv", *SHOW_RECIPE, cwd=lab)).stdout)))
    by_lr = {row["sft.lr"]: row for row in rows if row["Experiment"]}
    assert {"5e-05", "0.0002"} <= set(by_lr), rows
    assert all(float(by_lr[lr]["metrics/grpo.json:rougeL"]) >= 0 for lr in ("5e-05", "0.0002"))
    assert set(rows[0]) == {"Experiment", "Created", "sft.lr", "grpo.lr"} | {
        f"metrics/{m}.json:{k}" for m in ("baseline", "sft", "grpo") for k in ("rougeL", "bleu", "similarity")}

    names = {by_lr[lr]["Experiment"] for lr in ("5e-05", "0.0002")}
    # two experiments against each other
    diff = json.loads(ok(sh("dvc", "metrics", "diff", *sorted(names), "--all", "--json", cwd=lab)).stdout)
    assert "rougeL" in diff["metrics/grpo.json"] and "train_loss" in diff["metrics/sft_train.json"]
    # they ran in temporary copies, yet their MLflow runs are in this repository's store, named
    tagged = {(r.data.tags.get("dvc_exp_name"), r.data.tags.get("stage")) for r in mlflow_runs(lab)}
    assert {(name, stage) for name in names for stage in ("sft", "grpo", "eval")} <= tagged
