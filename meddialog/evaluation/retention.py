"""How much of an adapter survives 4-bit: the KL of each way of stacking it to the full-precision model.

    python -m meddialog.evaluation.retention --adapter models/sft --num-samples 8       # on this machine (CPU: NF4 too)

Mean per-token KL(full-precision chain || variant) over the full test dialogues (their chat-template
tokens, up to 512 each), for:
  chain_rule     the rule of meddialog.modeling.loading.load_model: lower adapters merged in full precision, the
                 result quantized to NF4, the top adapter unmerged on it (what eval scores)
  grpo_start     every adapter merged in full precision, then quantized (what GRPO trains on)
  merge_into_4bit  NF4 base with the adapter merged into the NF4 weights (PEFT re-quantizes; the old way)
  bare_4bit_base NF4 base, no adapter at all
  quantization_only  NF4 base against the full-precision base: the error 4-bit costs by itself
A rule that keeps the adapter sits near quantization_only; one that loses it near bare_4bit_base.
`make gpu-smoke` runs the same measurement on a GPU.
"""
from __future__ import annotations

import argparse
import gc
import logging
from dataclasses import replace
from pathlib import Path

from meddialog import atomic, cli
from meddialog.paths import SFT_DIR

log = logging.getLogger("retention")

MAX_TOKENS = 512


def token_batches(tokenizer, conversations: list[dict]) -> list:
    import torch

    return [torch.tensor([tokenizer.apply_chat_template(c["messages"], tokenize=True, return_dict=True)
                          ["input_ids"][:MAX_TOKENS]]) for c in conversations]


def log_probs(model, batches: list) -> list:
    import torch

    with torch.inference_mode():
        return [torch.log_softmax(model(ids.to(model.device)).logits.float(), dim=-1).cpu() for ids in batches]


def mean_kl(reference: list, other: list) -> float:
    """Mean over all tokens of KL(reference || other)."""
    total = count = 0.0
    for p, q in zip(reference, other):
        total += (p.exp() * (p - q)).sum(-1).sum().item()
        count += p.shape[1]
    return total / count


def retention(adapter: Path, conversations: list[dict], model_params) -> dict[str, float]:
    """The KL figures of the module docstring for the chain ending in `adapter`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from meddialog.modeling.loading import load_model, model_chain
    from meddialog.modeling.precision import load_kwargs, resolve

    base, adapters = model_chain(adapter)
    full = replace(model_params, load_in_4bit=False)
    nf4 = replace(model_params, load_in_4bit=True)
    batches = None

    def measure(loader) -> list:
        nonlocal batches
        model, tokenizer = loader()
        batches = batches or token_batches(tokenizer, conversations)
        result = log_probs(model, batches)
        del model
        gc.collect()
        return result

    def merged_into_4bit():
        model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, **load_kwargs(resolve(nf4)))
        for a in adapters:
            model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
        return model, None

    reference = measure(lambda: load_model(base, full, adapters))
    base_nf4 = measure(lambda: load_model(base, nf4))
    return {
        "chain_rule": mean_kl(reference, measure(lambda: load_model(base, nf4, adapters))),
        "grpo_start": mean_kl(reference, measure(lambda: load_model(base, nf4, adapters, for_training=True))),
        "merge_into_4bit": mean_kl(reference, measure(merged_into_4bit)),
        "bare_4bit_base": mean_kl(reference, base_nf4),
        "quantization_only": mean_kl(measure(lambda: load_model(base, full)), base_nf4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meddialog.evaluation.retention", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", type=Path, default=SFT_DIR)
    parser.add_argument("--num-samples", type=int, default=8, help="test dialogues (seeded selection, default 8)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from meddialog.data.subsets import seeded_prefix
    from meddialog.evaluation.evaluate import test_conversations
    from meddialog.params import load_params

    params = load_params()
    conversations = seeded_prefix(test_conversations(list(params.data.sources)), args.num_samples, params.seed)
    figures = retention(args.adapter, conversations, params.model)
    for name, value in figures.items():
        print(f"{name:>18}  {value:.4f}")
    if args.out:
        atomic.write_json(args.out, figures)


if __name__ == "__main__":
    cli.run(main)
