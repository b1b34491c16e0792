"""Knowledge stage: the medical multiple-choice benchmark through lm-evaluation-harness, per model.

    python -m stages.knowledge

Runs `knowledge.tasks` (the embedded meddialog_medmcq) and `knowledge.extra_tasks` on the base, sft and grpo
models and writes metrics/knowledge.json: `<model>.<task>.acc` / `acc_norm` with their standard errors, and
`<model>_minus_baseline` differences of acc (meddialog/evaluation/knowledge.py).
"""
from __future__ import annotations

import logging

from meddialog import atomic, cli
from meddialog.evaluation.knowledge import check_tasks, run_tasks, task_manager
from meddialog.modeling.loading import load_model, model_chain
from meddialog.params import load_params
from meddialog.paths import EVALUATED_MODELS, METRICS_DIR
from meddialog.tracking import start_run

log = logging.getLogger("knowledge")


def main() -> None:
    params = load_params()
    manager = task_manager()
    tasks = check_tasks(params, manager)  # unknown tasks, or hub tasks offline: stop before any model loads
    results = {}
    for name, path in EVALUATED_MODELS.items():
        base, adapters = model_chain(path)
        model, tokenizer = load_model(base, params.model, adapters)
        with start_run("knowledge", params.mlflow.experiment, run_name=f"knowledge:{name}") as run:
            run.log_params({"model_path": str(path), "tasks": ",".join(tasks), "num_fewshot": params.knowledge.num_fewshot,
                            "limit": params.knowledge.limit, "seed": params.seed})
            results[name] = run_tasks(model, tokenizer, tasks, params, manager)
            run.log_metrics({f"{task}.{k}": v for task, scores in results[name].items() for k, v in scores.items()})
        for task, scores in results[name].items():
            log.info("%s %s: acc %.4f ± %.4f, acc_norm %.4f ± %.4f on %d items", name, task, scores["acc"],
                     scores["acc_stderr"], scores["acc_norm"], scores["acc_norm_stderr"], scores["num_items"])
        del model
    for name in ("sft", "grpo"):
        results[f"{name}_minus_baseline"] = {
            task: {m: round(results[name][task][m] - results["baseline"][task][m], 6) for m in ("acc", "acc_norm")}
            for task in tasks}
    atomic.write_json(METRICS_DIR / "knowledge.json", results, sort_keys=True)
    log.info("wrote metrics/knowledge.json")


if __name__ == "__main__":
    cli.run(main)
