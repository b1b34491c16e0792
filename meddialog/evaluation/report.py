"""metrics/comparison.json, comparison_plot.csv and report.md: base vs sft vs grpo side by side."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

REPORT_METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "sentence_bleu", "similarity",
                  "answer_words_mean", "repetition", "empty_rate", "num_samples")
# The metrics of the bar chart in dvc.yaml (`plots:`), with the labels it shows.
PLOT_METRICS = {"rougeL": "ROUGE-L", "bleu": "BLEU-4", "similarity": "similarity"}
EXAMPLES = 3
EXCERPT_CHARS = 600


def comparison(results: dict[str, dict]) -> dict[str, float]:
    """Flat `<metric>.<model>` values plus `<metric>.<model>_minus_baseline` deltas."""
    flat: dict[str, float] = {}
    for metric in REPORT_METRICS:
        for model, metrics in results.items():
            flat[f"{metric}.{model}"] = metrics[metric]
            if model != "baseline":
                flat[f"{metric}.{model}_minus_baseline"] = round(metrics[metric] - results["baseline"][metric], 6)
    return flat


def comparison_plot_csv(results: dict[str, dict]) -> str:
    """One `model,metric,value` row per model and plotted metric: DVC plots read columns, not
    the nested keys of comparison.json, and one tidy table lets one chart group by metric."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "metric", "value"])
    for metric, label in PLOT_METRICS.items():
        for model, metrics in results.items():
            writer.writerow([model, label, metrics[metric]])
    return out.getvalue()


def markdown(results: dict[str, dict], predictions: dict[str, list[dict]],
             provenance: dict[str, dict] | None = None) -> str:
    models = list(results)
    lines = ["# Evaluation report", "",
             "Scores on the same seeded test conversations (see meddialog/evaluation/scoring.py for definitions).", "",
             "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for metric in REPORT_METRICS:
        lines.append(f"| {metric} | " + " | ".join(_number(metric, results[m][metric]) for m in models) + " |")
    counts = {results[m]["num_samples"] for m in models}
    if len(counts) > 1:
        lines += ["", "**Note:** the models were scored on different numbers of conversations "
                      "(baseline.num_samples differs from eval.num_samples), so the columns are not comparable."]
    lines += _provenance_lines(provenance or {})
    lines += ["", "## Examples", ""]
    by_id = {m: {row["id"]: row for row in rows} for m, rows in predictions.items()}
    shared = [row["id"] for row in predictions[models[0]] if all(row["id"] in by_id[m] for m in models)]
    for number, example_id in enumerate(shared[:EXAMPLES], start=1):
        first = by_id[models[0]][example_id]
        lines += [f"### Example {number} ({example_id})", "", f"**Patient:** {_excerpt(first['question'])}", "",
                  f"**Reference:** {_excerpt(first['reference'])}", ""]
        lines += [f"**{m}:** {_excerpt(by_id[m][example_id]['prediction']) or '(empty)'}" + "\n" for m in models]
    return "\n".join(lines).rstrip() + "\n"


def _provenance_lines(provenance: dict[str, dict]) -> list[str]:
    """Where the numbers were made (metrics/provenance/), and a warning when the models differ."""
    if not provenance:
        return []
    described = {m: f"{p['device']}, {p['dtype']}, quantization {p['quantization']}" for m, p in provenance.items()}
    if len(set(described.values())) == 1:
        return ["", f"Produced on {next(iter(described.values()))} (metrics/provenance/)."]
    return ["", "**Note:** the models were evaluated in different precisions, so the columns are not comparable: "
                + "; ".join(f"{m}: {d}" for m, d in described.items()) + "."]


def read_provenance(metrics_dir: Path, names: list[str]) -> dict[str, dict]:
    found = {}
    for name in names:
        path = metrics_dir / "provenance" / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def read_results(metrics_dir: Path, name: str) -> tuple[dict, list[dict]]:
    metrics = json.loads((metrics_dir / f"{name}.json").read_text())
    rows = [json.loads(line) for line in (metrics_dir / f"{name}_predictions.jsonl").read_text().splitlines()]
    return metrics, rows


def _number(metric: str, value: float) -> str:
    if metric == "num_samples":
        return f"{value:.0f}"
    return f"{value:.1f}" if metric.startswith("answer_words") else f"{value:.4f}"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"
