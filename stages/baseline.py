"""Stage 3 (tutorial step 3): score the base model before any training.

    python -m stages.baseline

Evaluates models/base on `baseline.num_samples` test conversations (a seeded selection from
every source's test split, the same conversations every model is scored on) and writes
metrics/baseline.json (DVC metrics) and metrics/baseline_predictions.jsonl.
"""
from __future__ import annotations

from meddialog import cli
from meddialog.data.subsets import seeded_prefix
from meddialog.evaluation.evaluate import evaluate_model, test_conversations
from meddialog.evaluation.scoring import Embedder
from meddialog.params import load_params
from meddialog.paths import BASE_DIR


def main() -> None:
    params = load_params()
    samples = seeded_prefix(test_conversations(list(params.data.sources)), params.baseline.num_samples, params.seed)
    evaluate_model("baseline", "baseline", BASE_DIR, samples, params, Embedder())


if __name__ == "__main__":
    cli.run(main)
