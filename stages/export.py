"""Stage: the trained model as one directory that leaves the repository (models/export).

    python -m stages.export

Merges the chain `export.model` names (grpo: base → sft → grpo, by default) in `export.dtype` into
models/export (meddialog/export/model.py), writes its model card (README.md, meddialog/export/card.py),
then checks with plain transformers that the export answers the evaluated test conversations exactly
as the pipeline's model did (meddialog/export/parity.py), into metrics/export.json.
"""
from __future__ import annotations

import json
import logging

from meddialog import atomic, cli
from meddialog.export.card import base_identity, model_card
from meddialog.export.model import write_export
from meddialog.export.parity import EVALUATED_AS, compare, evaluated_prompts, plain_answers
from meddialog.params import Params, load_params
from meddialog.paths import EXPORT_DIR, METRICS_DIR, PROVENANCE_DIR

log = logging.getLogger("export")


def main() -> None:
    params = load_params()
    lineage = write_export(params, EXPORT_DIR, card=lambda lineage: model_card(
        params, lineage, base_identity(lineage["base_source"], params.data.hub_timeout_s)))
    parity = check_parity(params)
    summary = {"parameters": lineage["parameters"], "tensors_changed": lineage["tensors_changed"],
               "size_mb": round(sum(f.stat().st_size for f in EXPORT_DIR.glob("*.safetensors")) / 1e6, 1), **parity}
    atomic.write_json(METRICS_DIR / "export.json", summary, sort_keys=True)
    log.info("wrote %s and metrics/export.json", EXPORT_DIR)


def check_parity(params: Params) -> dict:
    """Plain transformers on the export against the recorded predictions of the same model. Identity is
    expected when they were made greedily in the export's precision (float32 on the CPU, no 4-bit)."""
    name = EVALUATED_AS[params.export.model]
    if params.generation.do_sample:
        log.info("parity not checked: generation.do_sample is true, so answers are samples")
        return {"parity_compared": 0}
    recorded = json.loads((PROVENANCE_DIR / f"{name}.json").read_text())
    expected = recorded["quantization"] == "none" and recorded["dtype"] == params.export.dtype
    rows, prompts = evaluated_prompts(METRICS_DIR / f"{name}_predictions.jsonl")
    result = compare(rows, plain_answers(EXPORT_DIR, prompts, params.generation.batch_size))
    log.info("parity: %d of %d answers of plain transformers on %s identical to metrics/%s_predictions.jsonl",
             result["identical"], result["compared"], EXPORT_DIR, name)
    if expected and result["differing_ids"]:
        log.warning("the export should answer exactly as %s was evaluated (%s, no quantization); it differs on %s",
                    name, params.export.dtype, ", ".join(result["differing_ids"]))
    return {"parity_compared": result["compared"], "parity_identical": result["identical"],
            "parity_expected": int(expected)}


if __name__ == "__main__":
    cli.run(main)
