"""Medical knowledge through lm-evaluation-harness: did fine-tuning make the model forget?

The harness (lm-eval, pinned) runs its own task definitions; the embedded task `meddialog_medmcq`
(data/knowledge/, an original 4-option set with a data card) is registered from that directory, so the
default run needs no network. `knowledge.extra_tasks` adds the harness's hub-hosted tasks (medqa_4options,
medmcqa, pubmedqa, mmlu_clinical_knowledge, ...) for machines with network; `check_tasks` runs before any
model loads and stops in seconds, saying so, when the hub is out of reach.

The model is the pipeline's own in-memory chain (meddialog.modeling.loading.load_model, merged as eval
merges it) handed to the harness's HFLM wrapper, so what is scored is what eval scored.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

from meddialog.errors import UserError
from meddialog.params import Params
from meddialog.paths import KNOWLEDGE_TASKS_DIR

log = logging.getLogger(__name__)

METRICS = ("acc", "acc_norm")


def task_manager(tasks_dir: Path = KNOWLEDGE_TASKS_DIR):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(tasks_dir))


def check_tasks(params: Params, manager) -> list[str]:
    """Every task the run will ask for, checked against the harness's registry; extra (hub) tasks need the
    hub, probed here with data.hub_timeout_s. Raises UserError before anything heavy happens."""
    wanted = list(params.knowledge.tasks) + list(params.knowledge.extra_tasks)
    known = set(manager.all_tasks)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (`lm_eval ls tasks` lists them)"
            raise UserError(f"knowledge: lm-evaluation-harness has no task {name!r}{hint}")
    if params.knowledge.extra_tasks:
        from meddialog.hub import select_endpoint

        select_endpoint(f"knowledge.extra_tasks ({', '.join(params.knowledge.extra_tasks)}): their data is on the hub",
                        params.data.hub_mirror, params.data.hub_timeout_s,
                        "set knowledge.extra_tasks to [] to run offline (the embedded meddialog_medmcq needs no network)")
    return wanted


def run_tasks(model, tokenizer, tasks: list[str], params: Params, manager) -> dict[str, dict[str, float]]:
    """task → acc, acc_stderr, acc_norm, acc_norm_stderr, num_items (the metrics a task reports)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=params.knowledge.batch_size)
    results = lm_eval.simple_evaluate(
        model=wrapped, tasks=tasks, task_manager=manager, num_fewshot=params.knowledge.num_fewshot,
        limit=params.knowledge.limit or None, random_seed=params.seed, numpy_random_seed=params.seed,
        torch_random_seed=params.seed, fewshot_random_seed=params.seed, log_samples=False)
    out = {}
    for task in tasks:
        row = results["results"][task]
        scores = {}
        for metric in METRICS:
            if f"{metric},none" in row:
                scores[metric] = round(float(row[f"{metric},none"]), 6)
                scores[f"{metric}_stderr"] = round(float(row[f"{metric}_stderr,none"]), 6)
        if not scores:
            raise UserError(f"knowledge: task {task} reports neither acc nor acc_norm (it reports "
                            f"{', '.join(k for k in row if ',' in k)}); list only multiple-choice tasks")
        scores["num_items"] = float(results["n-samples"][task]["effective"])
        out[task] = scores
    return out
