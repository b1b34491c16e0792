"""Report stage: everything the evaluations measured, in one page and one chart.

    python -m stages.report

Reads the metrics the baseline, eval, safety, knowledge and judge stages wrote and writes metrics/report.md
(scores, paired differences with intervals and "within noise" where an interval covers 0, the safety table,
benchmark accuracy, judge win rates, three example answers), metrics/comparison_plot.csv (the score bars) and
metrics/evaluation_plot.csv (the intervals chart of `dvc plots show`).
"""
from __future__ import annotations

import logging

from meddialog import atomic, cli
from meddialog.evaluation.report import (
    comparison_plot_csv,
    evaluation_plot_csv,
    markdown,
    read_json,
    read_provenance,
    read_results,
)
from meddialog.paths import EVALUATED_MODELS, METRICS_DIR

log = logging.getLogger("report")


def main() -> None:
    results, predictions = {}, {}
    for name in EVALUATED_MODELS:
        results[name], predictions[name] = read_results(METRICS_DIR, name)
    comparison = read_json(METRICS_DIR / "comparison.json") or {}
    safety, knowledge, judge = (read_json(METRICS_DIR / f"{n}.json") for n in ("safety", "knowledge", "judge"))
    atomic.write_text(METRICS_DIR / "comparison_plot.csv", comparison_plot_csv(results))
    atomic.write_text(METRICS_DIR / "evaluation_plot.csv", evaluation_plot_csv(comparison, safety, knowledge, judge))
    report = markdown(results, predictions, read_provenance(METRICS_DIR, list(results)), comparison, safety,
                      knowledge, judge)
    atomic.write_text(METRICS_DIR / "report.md", report)
    log.info("wrote metrics/report.md, metrics/comparison_plot.csv and metrics/evaluation_plot.csv")


if __name__ == "__main__":
    cli.run(main)
