"""The knowledge benchmark: the embedded task as lm-evaluation-harness sees it, the offline guard for hub tasks,
and a real harness run on the tiny model."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from meddialog.errors import UserError
from meddialog.evaluation.knowledge import check_tasks, run_tasks, task_manager
from meddialog.params import load_params
from tests.conftest import REPO

ITEMS = REPO / "data" / "knowledge" / "medmcq.jsonl"


@pytest.fixture(scope="module")
def manager():
    return task_manager(REPO / "data" / "knowledge")


def test_the_embedded_set_is_well_formed():
    items = [json.loads(line) for line in ITEMS.read_text(encoding="utf-8").splitlines()]
    assert len(items) >= 150 and len({i["id"] for i in items}) == len({i["question"] for i in items}) == len(items)
    for item in items:
        assert len(item["choices"]) == len(set(item["choices"])) == 4 and item["answer"] in range(4), item["id"]
    positions = [sum(i["answer"] == k for i in items) for k in range(4)]
    assert max(positions) - min(positions) <= len(items) // 10  # no answer position to learn


def test_unknown_tasks_are_named_with_the_close_ones(manager):
    params = load_params(REPO / "params.yaml")
    bad = dataclasses.replace(params, knowledge=dataclasses.replace(params.knowledge, tasks=["meddialog_medmcqq"]))
    with pytest.raises(UserError, match="no task 'meddialog_medmcqq'; did you mean meddialog_medmcq"):
        check_tasks(bad, manager)


def test_hub_tasks_offline_fail_fast_and_say_so(manager, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = load_params(REPO / "params.yaml")
    extra = dataclasses.replace(params, knowledge=dataclasses.replace(params.knowledge, extra_tasks=["medmcqa"]))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"knowledge.extra_tasks \(medmcqa\).*set knowledge.extra_tasks to \[\]"):
        check_tasks(extra, manager)
    assert time.monotonic() - started < 10
    assert check_tasks(params, manager) == ["meddialog_medmcq"]  # the embedded task needs nothing


@pytest.mark.slow
def test_the_harness_scores_a_model_on_the_embedded_task(manager, tiny_model_dir, monkeypatch):
    from meddialog.modeling.loading import load_model

    monkeypatch.chdir(REPO)  # the task's data path is relative to the repository root
    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(params, knowledge=dataclasses.replace(params.knowledge, limit=12, batch_size=8))
    model, tokenizer = load_model(tiny_model_dir, params.model)
    first = run_tasks(model, tokenizer, ["meddialog_medmcq"], params, manager)["meddialog_medmcq"]
    assert first["num_items"] == 12
    assert 0 <= first["acc"] <= 1 and 0 <= first["acc_norm"] <= 1 and first["acc_stderr"] > 0
    assert run_tasks(model, tokenizer, ["meddialog_medmcq"], params, manager)["meddialog_medmcq"] == first
