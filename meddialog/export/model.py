"""The export: one model directory, the chosen adapter chain merged into the base in full precision.

models/export carries everything a serving engine or another toolkit needs and nothing of this
repository: safetensors weights, the tokenizer with its chat template, generation_config.json (every
stop id, and the pipeline's own decoding), lineage.json (what was merged, and proof it changed the
weights) and README.md, the model card (meddialog/export/card.py). It loads with plain
`AutoModelForCausalLM.from_pretrained`, and plain `model.generate` stops where the pipeline stops.

Merging happens on the CPU in `export.dtype`, never into 4-bit weights (re-quantizing rounds the LoRA
delta away, peft#2321). Two failures users of other toolkits meet are refused here instead of shipped:
an adapter that is an exact no-op (all lora_B zero, or lora_alpha 0: a "merged" model byte-identical
to its base, verl#4553) and a merge that left every weight as it was.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from meddialog import atomic
from meddialog.errors import UserError
from meddialog.modeling.generation import generate_kwargs
from meddialog.modeling.loading import LINEAGE_FILE, SOURCE_FILE, model_chain
from meddialog.modeling.merge import merged_model
from meddialog.params import Params
from meddialog.paths import BASE_DIR, GRPO_DIR, SFT_DIR

log = logging.getLogger(__name__)

EXPORTABLE = {"grpo": GRPO_DIR, "sft": SFT_DIR, "base": BASE_DIR}
# generate() takes an unset value from its global defaults (top_k 50 when sampling); the pipeline
# unsets these on purpose, so the export writes the values that mean "off".
NEUTRAL = {"top_k": 0, "repetition_penalty": 1.0}


def export_chain(which: str) -> tuple[Path, tuple[Path, ...]]:
    """(base directory, adapters in order) of the model `export.model` names."""
    path = EXPORTABLE[which]
    if not path.exists():
        stage = "base_model" if which == "base" else which
        raise UserError(f"{path} not found: the {stage} stage has not produced it (`dvc repro {stage}`)")
    return model_chain(path)


def write_export(params: Params, out_dir: Path, card: Callable[[dict], str] | None = None) -> dict:
    """Merge the chain `export.model` names into `out_dir`, with `card(lineage)` as its README.md;
    returns the lineage record."""
    from transformers import AutoTokenizer

    base, adapters = export_chain(params.export.model)
    for adapter in adapters:
        refuse_no_op(adapter)
    trust = params.model.trust_remote_code
    model = merged_model(base, adapters, params.export.dtype, trust)
    changed, compared = changed_tensors(model, base)
    if adapters and changed == 0:
        raise UserError(f"merging {' + '.join(map(str, adapters))} into {base} changed no weight: "
                        "the export would be the base model; retrain the adapters (`dvc repro -f sft grpo`)")
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust)
    if tokenizer.pad_token is None:  # batched generation and serving need one; EOS is what the stages pad with
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config = export_generation_config(tokenizer, model.generation_config, params)
    lineage = {
        "model": params.export.model,
        "base_model": str(base),
        "base_source": _read_json(Path(base) / SOURCE_FILE),
        "adapters": [adapter_record(a) for a in adapters],
        "dtype": params.export.dtype,
        "tensors_changed": changed,
        "tensors_compared": compared,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with atomic.directory(out_dir) as partial:  # renamed when complete: a kill leaves no half export
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        atomic.write_json(partial / LINEAGE_FILE, lineage, sort_keys=True)
        if card is not None:
            atomic.write_text(partial / "README.md", card(lineage))
    log.info("exported %s (%s, %d of %d weight tensors changed by the merge) to %s",
             " + ".join(map(str, (base, *adapters))), params.export.dtype, changed, compared, out_dir)
    return lineage


def export_generation_config(tokenizer, base_generation_config, params: Params):
    """The pipeline's decoding (meddialog.modeling.generation.generate_kwargs) as a GenerationConfig:
    every stop id (EOS and end-of-turn), the pad id, greedy or temperature / top-p sampling."""
    from transformers import GenerationConfig

    settings = generate_kwargs(tokenizer, base_generation_config, params.generation)
    if settings["do_sample"]:
        settings.update({k: v for k, v in NEUTRAL.items() if settings.get(k) is None})
    kept = {k: v for k, v in settings.items() if v is not None}
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, **kept)


def refuse_no_op(adapter: Path) -> None:
    """Stop on an adapter whose merge cannot change the model: lora_alpha 0, or every lora_B entry zero
    (an untrained PEFT adapter: lora_B starts at zero)."""
    from safetensors import safe_open

    config = _read_json(Path(adapter) / "adapter_config.json") or {}
    if config.get("lora_alpha") == 0:
        raise UserError(f"{adapter}: lora_alpha is 0, so merging it changes nothing (check adapter_config.json)")
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{adapter}: no adapter_model.safetensors (weights are never read from pickles)")
    with safe_open(weights, framework="pt") as tensors:
        if not any(tensors.get_tensor(k).any() for k in tensors.keys() if "lora_B" in k):
            raise UserError(f"{adapter}: every lora_B weight is zero (an untrained adapter): "
                            "merging it would export the model below it unchanged")


def changed_tensors(model, base_dir: Path) -> tuple[int, int]:
    """(weight tensors of `model` that differ from `base_dir`'s, tensors compared), one at a time from disk."""
    import torch
    from safetensors import safe_open

    state = model.state_dict()
    changed = compared = 0
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(file, framework="pt") as tensors:
            for name in tensors.keys():
                if name in state:
                    compared += 1
                    changed += not torch.equal(tensors.get_tensor(name).to(state[name].dtype), state[name])
    return changed, compared


def adapter_record(adapter: Path) -> dict:
    """What identifies an adapter in the export's lineage: path, LoRA shape and scaling, weight digest."""
    from meddialog.digests import file_digest

    config = _read_json(Path(adapter) / "adapter_config.json") or {}
    return {"path": str(adapter), "r": config.get("r"), "lora_alpha": config.get("lora_alpha"),
            "target_modules": sorted(config.get("target_modules") or []),
            "weights_sha256": file_digest(Path(adapter) / "adapter_model.safetensors")}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
