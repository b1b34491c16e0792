"""Final evaluation stage (tutorial "Evaluating Results"): score the sft and grpo models beside the base.

    python -m stages.eval

Evaluates models/sft and models/grpo (adapter chains on models/base) on `eval.num_samples`
test conversations, selected exactly as the baseline stage selects them, and writes
metrics/{sft,grpo}.json with predictions beside them, and metrics/comparison.json: every metric per
model and the paired differences sft − base, grpo − sft and grpo − base, each with its bootstrap
interval (`eval.bootstrap_resamples` draws of the conversations, meddialog/evaluation/intervals.py).
The report stage turns them into metrics/report.md.
"""
from __future__ import annotations

import logging

from meddialog import atomic, cli
from meddialog.data.subsets import seeded_prefix
from meddialog.errors import UserError
from meddialog.evaluation.evaluate import (
    evaluate_model,
    test_conversations,
)
from meddialog.evaluation.intervals import PAIRS, conversation_scores, paired_differences
from meddialog.evaluation.report import comparison, read_results
from meddialog.evaluation.scoring import Embedder
from meddialog.params import load_params
from meddialog.paths import EVALUATED_MODELS, GRPO_DIR, METRICS_DIR, SFT_DIR

log = logging.getLogger("eval")

TRAINED = {"sft": SFT_DIR, "grpo": GRPO_DIR}


def main() -> None:
    params = load_params()
    for name, path in TRAINED.items():
        if not path.is_dir():
            raise UserError(f"{path} not found: the {name} stage has not produced a model (`dvc repro {name}`)")
    if not (METRICS_DIR / "baseline.json").is_file():
        raise UserError("metrics/baseline.json not found: run the baseline stage first (`dvc repro baseline`)")
    samples = seeded_prefix(test_conversations(list(params.data.sources)), params.eval.num_samples, params.seed)
    embedder = Embedder()
    for name, path in TRAINED.items():
        evaluate_model("eval", name, path, samples, params, embedder)
    results, scores = {}, {}
    for name in EVALUATED_MODELS:
        results[name], rows = read_results(METRICS_DIR, name)
        scores[name] = conversation_scores(rows, embedder)
    differences = {(newer, older): paired_differences(scores[newer], scores[older], params.eval.bootstrap_resamples,
                                                      params.seed, params.eval.confidence)
                   for newer, older in PAIRS}
    flat = {**comparison(results, differences), "bootstrap.resamples": float(params.eval.bootstrap_resamples),
            "bootstrap.confidence": params.eval.confidence}
    atomic.write_json(METRICS_DIR / "comparison.json", flat, sort_keys=True)
    for (newer, older), diffs in differences.items():
        log.info("%s − %s: %s", newer, older, ", ".join(
            f"{d.metric} {d.value:+.4f} [{d.low:+.4f}, {d.high:+.4f}]" for d in diffs if d.metric in ("rougeL", "bleu")))
    log.info("wrote metrics/comparison.json")


if __name__ == "__main__":
    cli.run(main)
