"""Judge stage (opt-in): pairwise judging of the base, sft and grpo answers by an OpenAI-compatible endpoint.

    python -m stages.judge

With `eval.judge.enabled: false` (the default) it writes metrics/judge.json saying so and contacts nothing.
Otherwise it checks the endpoint (seconds), judges every shared test conversation of sft vs base, grpo vs sft
and grpo vs base in both orders (meddialog/evaluation/judge.py) and writes win/tie/loss rates with intervals.
"""
from __future__ import annotations

import logging

from meddialog import atomic, cli
from meddialog.evaluation.judge import Endpoint, VerdictCache, judge_pairs
from meddialog.evaluation.report import read_results
from meddialog.params import load_params
from meddialog.paths import EVALUATED_MODELS, JUDGE_CACHE, METRICS_DIR
from meddialog.tracking import start_run

log = logging.getLogger("judge")


def main() -> None:
    params = load_params()
    settings = params.eval.judge
    out = METRICS_DIR / "judge.json"
    if not settings.enabled:
        atomic.write_json(out, {"enabled": 0})  # numbers only: a DVC metrics file
        log.info("eval.judge.enabled is false: no judging (wrote %s)", out)
        return
    endpoint = Endpoint(settings)
    endpoint.check()
    predictions = {name: read_results(METRICS_DIR, name)[1] for name in EVALUATED_MODELS}
    with start_run("judge", params.mlflow.experiment, run_name="judge") as run:
        # the endpoint and the rubric, never the key (it stays in the environment)
        run.log_params({"base_url": settings.base_url, "judge_model": settings.model, "rubric": settings.rubric[:500],
                        "max_tokens": settings.max_tokens})
        result = judge_pairs(predictions, settings, VerdictCache(JUDGE_CACHE), endpoint)
        run.log_metrics({f"{pair}.{k}": v for pair, row in result["pairs"].items() for k, v in row.items()})
    for pair, row in result["pairs"].items():
        log.info("%s: win %.2f, tie %.2f, loss %.2f over %d conversations (%d failed)", pair, row["win"], row["tie"],
                 row["loss"], row["judged"], row["failed"])
    atomic.write_json(out, result, sort_keys=True)
    log.info("wrote %s", out)


if __name__ == "__main__":
    cli.run(main)
