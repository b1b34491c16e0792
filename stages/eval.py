"""Final stage (tutorial "Evaluating Results"): score the sft and grpo models beside the base.

    python -m stages.eval

Evaluates models/sft and models/grpo (adapter chains on models/base) on `eval.num_samples`
test conversations, selected exactly as the baseline stage selects them, and writes
metrics/{sft,grpo}.json with predictions beside them, metrics/comparison.json,
metrics/comparison_plot.csv (the data of the bar chart in `dvc plots show`) and
metrics/report.md (a table base vs sft vs grpo and three side-by-side examples).
"""
from __future__ import annotations

import json
import logging

from meddialog import cli
from meddialog.data.subsets import seeded_prefix
from meddialog.errors import UserError
from meddialog.evaluation.evaluate import (
    evaluate_model,
    test_conversations,
)
from meddialog.evaluation.report import (
    comparison,
    comparison_plot_csv,
    markdown,
    read_provenance,
    read_results,
)
from meddialog.evaluation.scoring import Embedder
from meddialog.params import load_params
from meddialog.paths import GRPO_DIR, METRICS_DIR, SFT_DIR

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
    results, predictions = {}, {}
    for name in ("baseline", *TRAINED):
        results[name], predictions[name] = read_results(METRICS_DIR, name)
    (METRICS_DIR / "comparison.json").write_text(json.dumps(comparison(results), indent=2, sort_keys=True) + "\n")
    (METRICS_DIR / "comparison_plot.csv").write_text(comparison_plot_csv(results))
    provenance = read_provenance(METRICS_DIR, list(results))
    (METRICS_DIR / "report.md").write_text(markdown(results, predictions, provenance), encoding="utf-8")
    log.info("wrote metrics/comparison.json, metrics/comparison_plot.csv and metrics/report.md")


if __name__ == "__main__":
    cli.run(main)
