"""metrics/comparison.json, the plot tables and report.md: base vs sft vs grpo side by side, with intervals.

comparison.json (the eval stage) holds every metric per model and each paired difference
`<metric>.<newer>_minus_<older>` with its interval's `_low` and `_high`; report.md (the report stage) adds
the safety probe, the knowledge benchmark and the judge when their stages have run.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from meddialog.evaluation.intervals import PAIRS, Difference

MODEL_ORDER = ("baseline", "sft", "grpo")  # columns in pipeline order, whatever order a JSON file keeps

REPORT_METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "sentence_bleu", "similarity",
                  "answer_words_mean", "repetition", "empty_rate", "num_samples")
# The metrics of the bar chart in dvc.yaml (`plots:`), with the labels it shows.
PLOT_METRICS = {"rougeL": "ROUGE-L", "bleu": "BLEU-4", "similarity": "similarity"}
EXAMPLES = 3
EXCERPT_CHARS = 600


def comparison(results: dict[str, dict], differences: dict[tuple[str, str], list[Difference]]) -> dict[str, float]:
    """Flat `<metric>.<model>` values, plus each paired difference `<metric>.<newer>_minus_<older>` (over the
    conversations both scored) with its interval as `..._low` / `..._high`."""
    flat: dict[str, float] = {}
    for metric in REPORT_METRICS:
        for model, metrics in results.items():
            flat[f"{metric}.{model}"] = metrics[metric]
    for (newer, older), diffs in differences.items():
        for d in diffs:
            key = f"{d.metric}.{newer}_minus_{older}"
            flat[key], flat[f"{key}_low"], flat[f"{key}_high"] = d.value, d.low, d.high
    return flat


def differences_from(comparison_json: dict) -> dict[str, list[Difference]]:
    """comparison.json's paired differences again, by `<newer>_minus_<older>`, in REPORT_METRICS order."""
    found: dict[str, list[Difference]] = {}
    for key in sorted(comparison_json):
        metric, _, pair = key.partition(".")
        if "_minus_" in pair and not pair.endswith(("_low", "_high")) and f"{key}_low" in comparison_json:
            found.setdefault(pair, []).append(Difference(metric, comparison_json[key], comparison_json[f"{key}_low"],
                                                         comparison_json[f"{key}_high"]))
    order = {m: i for i, m in enumerate(REPORT_METRICS)}
    pair_order = [f"{newer}_minus_{older}" for newer, older in PAIRS]
    ranked = sorted(found, key=lambda p: pair_order.index(p) if p in pair_order else len(pair_order))
    return {pair: sorted(found[pair], key=lambda d: order.get(d.metric, len(order))) for pair in ranked}


def _in_order(models) -> list[str]:
    return sorted(models, key=lambda m: MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER))


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
             provenance: dict[str, dict] | None = None, comparison_json: dict | None = None,
             safety: dict | None = None, knowledge: dict | None = None, judge: dict | None = None) -> str:
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
    lines += _difference_lines(comparison_json or {})
    lines += _safety_lines(safety)
    lines += _knowledge_lines(knowledge)
    lines += _judge_lines(judge)
    lines += ["", "## Examples", ""]
    by_id = {m: {row["id"]: row for row in rows} for m, rows in predictions.items()}
    shared = [row["id"] for row in predictions[models[0]] if all(row["id"] in by_id[m] for m in models)]
    for number, example_id in enumerate(shared[:EXAMPLES], start=1):
        first = by_id[models[0]][example_id]
        lines += [f"### Example {number} ({example_id})", "", f"**Patient:** {_excerpt(first['question'])}", "",
                  f"**Reference:** {_excerpt(first['reference'])}", ""]
        lines += [f"**{m}:** {_excerpt(by_id[m][example_id]['prediction']) or '(empty)'}" + "\n" for m in models]
    return "\n".join(lines).rstrip() + "\n"


def _difference_lines(comparison_json: dict) -> list[str]:
    found = differences_from(comparison_json)
    if not found:
        return []
    pairs = list(found)
    resamples = comparison_json.get("bootstrap.resamples", 0)
    confidence = comparison_json.get("bootstrap.confidence", 0.95)
    lines = ["", f"## Differences, with {confidence:.0%} intervals", "",
             f"Paired bootstrap: {resamples:.0f} seeded resamples of the conversations both models answered "
             "(meddialog/evaluation/intervals.py). *within noise*: the interval covers 0, so this test set cannot "
             "tell the two models apart on that metric.", "",
             "| metric | " + " | ".join(p.replace("_minus_", " − ") for p in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for index, first in enumerate(found[pairs[0]]):
        cells = [_interval_cell(found[p][index]) for p in pairs]
        lines.append(f"| {first.metric} | " + " | ".join(cells) + " |")
    return lines


def _interval_cell(d: Difference) -> str:
    digits = 1 if d.metric.startswith("answer_words") else 4
    cell = f"{d.value:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
    if d.low == d.high == 0:
        return f"{cell} *identical*"
    return f"{cell} *within noise*" if d.within_noise else cell


def _safety_lines(safety: dict | None) -> list[str]:
    from meddialog.evaluation.safety import KINDS

    if not safety:
        return []
    models = _in_order(safety)
    lines = ["", "## Safety probe", "",
             "Held-out prompts (data/safety/, never trained on); rates with 95% Wilson intervals; detectors in "
             "meddialog/evaluation/safety.py, independent of the GRPO safety reward's patterns.", "",
             "| behaviour (prompts) | careful answer | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for kind, (_, name, careful) in KINDS.items():
        count = safety[models[0]][f"{kind}_prompts"]
        cells = [f"{safety[m][name]:.2f} [{safety[m][name + '_low']:.2f}, {safety[m][name + '_high']:.2f}]"
                 for m in models]
        lines.append(f"| {name} ({kind}, {count:.0f}) | {careful} | " + " | ".join(cells) + " |")
    disagreement = ", ".join(
        f"{kind} " + "/".join(f"{safety[m][kind + '_reward_disagreement']:.2f}" for m in models) for kind in KINDS)
    lines += ["", f"The GRPO reward's patterns disagree with the detectors on this share of answers "
                  f"({'/'.join(models)}): {disagreement}. The reward's red-flag list recognises "
                  f"{safety[models[0]]['red_flag_seen_by_reward']:.0%} of the red-flag prompts."]
    return lines


def _knowledge_lines(knowledge: dict | None) -> list[str]:
    if not knowledge:
        return []
    models = _in_order(m for m in knowledge if "_minus_" not in m)
    tasks = list(knowledge[models[0]])
    lines = ["", "## Knowledge benchmark (lm-evaluation-harness)", "",
             "Zero-shot multiple choice; accuracy ± standard error (data/knowledge/ for the embedded task).", "",
             "| task | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            if metric in knowledge[models[0]][task]:
                cells = [f"{knowledge[m][task][metric]:.4f} ± {knowledge[m][task][metric + '_stderr']:.4f}"
                         for m in models]
                lines.append(f"| {task} ({knowledge[models[0]][task]['num_items']:.0f} items) | {metric} | "
                             + " | ".join(cells) + " |")
    return lines


def _judge_lines(judge: dict | None) -> list[str]:
    if not judge:
        return []
    if not judge.get("enabled"):
        return ["", "## Judge", "", "Not run: `eval.judge.enabled` is false (docs/evaluation.md, Judge)."]
    lines = ["", "## Judge", "",
             "Pairwise, each pair judged in both orders by the model `eval.judge` names; a win needs both orders to agree "
             "(or one win and one tie); rates with 95% Wilson intervals.", "",
             "| pair | win | tie | loss | judged | failed replies |", "|---|---|---|---|---|---|"]
    for pair, row in judge["pairs"].items():
        cells = [f"{row[k]:.2f} [{row[k + '_low']:.2f}, {row[k + '_high']:.2f}]" for k in ("win", "tie", "loss")]
        lines.append(f"| {pair.replace('_vs_', ' vs ')} | " + " | ".join(cells)
                     + f" | {row['judged']:.0f} | {row['failed']:.0f} |")
    return lines


def evaluation_plot_csv(comparison_json: dict, safety: dict | None, knowledge: dict | None,
                        judge: dict | None) -> str:
    """The intervals chart's data (dvc.yaml `plots: evaluation`): `panel,label,value,low,high` rows."""
    from meddialog.evaluation.safety import KINDS

    rows = []
    for pair, diffs in differences_from(comparison_json).items():
        for d in diffs:
            if d.metric in PLOT_METRICS:
                rows.append((f"{PLOT_METRICS[d.metric]} difference", pair.replace("_minus_", " − "), d.value, d.low,
                             d.high))
    for _, name, _ in (KINDS.values() if safety else ()):
        rows += [(name, m, safety[m][name], safety[m][name + "_low"], safety[m][name + "_high"])
                 for m in _in_order(safety)]
    for model in _in_order(m for m in (knowledge or {}) if "_minus_" not in m):
        rows += [(f"{task} acc", model, s["acc"], round(s["acc"] - 1.96 * s["acc_stderr"], 6),
                  round(s["acc"] + 1.96 * s["acc_stderr"], 6)) for task, s in knowledge[model].items()]
    if judge and judge.get("enabled"):
        rows += [("judge win rate", pair.replace("_vs_", " vs "), r["win"], r["win_low"], r["win_high"])
                 for pair, r in judge["pairs"].items()]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["panel", "label", "value", "low", "high"])
    writer.writerows(rows)
    return out.getvalue()


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


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
