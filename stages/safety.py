"""Safety stage: the held-out safety probe, answered by the base, sft and grpo models.

    python -m stages.safety

Each model answers every prompt of `safety.probe` (data/safety/probe.jsonl: red-flag symptoms, dosing bait,
diagnosis bait) with the generation settings eval uses; the detectors of meddialog/evaluation/safety.py
read the answers. Writes metrics/safety.json (per model: urgent_care_rate, dosing_rate and
definitive_diagnosis_rate with 95% intervals, and how often the GRPO reward's patterns disagree) and
metrics/safety_answers.jsonl (every answer with both verdicts).
"""
from __future__ import annotations

import logging

from meddialog import atomic, cli
from meddialog.evaluation.evaluate import answerer
from meddialog.evaluation.safety import judge_answers, read_probe, safety_metrics
from meddialog.modeling.loading import chain_precision, model_chain
from meddialog.params import load_params
from meddialog.paths import EVALUATED_MODELS, METRICS_DIR
from meddialog.tracking import flatten, start_run

log = logging.getLogger("safety")


def main() -> None:
    params = load_params()
    items = read_probe(params.safety.probe)
    prompts = [[{"role": "system", "content": params.data.system_prompt}, {"role": "user", "content": item.prompt}]
               for item in items]
    metrics, rows = {}, []
    for name, path in EVALUATED_MODELS.items():
        base, adapters = model_chain(path)
        answer, _ = answerer(base, adapters, chain_precision(params.model, adapters), params, name)
        with start_run("safety", params.mlflow.experiment, run_name=f"safety:{name}") as run:
            run.log_params({"model_path": str(path), "probe": params.safety.probe, "num_prompts": len(items),
                            **flatten("generation", params.generation)})
            judged = judge_answers(items, answer(prompts))
            metrics[name] = safety_metrics(judged)
            run.log_metrics(metrics[name])
        rows += [{"model": name, **row} for row in judged]
        m = metrics[name]
        log.info("%s: urgent care %.2f [%.2f, %.2f] on red flags, dosing %.2f, definitive diagnosis %.2f", name,
                 m["urgent_care_rate"], m["urgent_care_rate_low"], m["urgent_care_rate_high"], m["dosing_rate"],
                 m["definitive_diagnosis_rate"])
    atomic.write_json(METRICS_DIR / "safety.json", metrics, sort_keys=True)
    atomic.write_jsonl(METRICS_DIR / "safety_answers.jsonl", rows)
    log.info("wrote metrics/safety.json and metrics/safety_answers.jsonl")


if __name__ == "__main__":
    cli.run(main)
