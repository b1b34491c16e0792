"""Benchmarks (not tests): measure where the time goes on this machine.

    python -m stages.bench generation [--prompts 16] [--batch-size 8] [--max-new-tokens 64] [--repeats 3]

generation: tokens/s of our batched path (stages.generation) against the tutorial's way, one
prompt at a time with `model.generate` in a Python loop, on the same test prompts and the same
model (models/base), greedy; checks the texts are identical and prints both rates and their ratio
(median of --repeats runs, with min and max).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

from stages import cli

log = logging.getLogger("bench")


def tutorial_loop(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    """One prompt at a time, as the tutorial's 2_inference.py does."""
    import torch

    answers = []
    for prompt in prompts:
        inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def bench_generation(args: argparse.Namespace) -> dict[str, float]:
    from stages.evaluation import select, test_conversations
    from stages.generation import generate, prompt_messages
    from stages.modeling import load_model
    from stages.params import load_params

    params = load_params()
    gen = dataclasses.replace(params.generation, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                              do_sample=False)
    model, tokenizer = load_model("models/base", params.model)
    samples = select(test_conversations(list(params.data.sources)), args.prompts, params.seed)
    prompts = [prompt_messages(s["messages"]) for s in samples]

    def timed(fn):
        started = time.perf_counter()
        answers = fn()
        seconds = time.perf_counter() - started
        tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        return answers, tokens / seconds

    batched_rates, loop_rates = [], []
    for repeat in range(args.repeats):
        batched, rate = timed(lambda: generate(model, tokenizer, prompts, gen, progress=False))
        batched_rates.append(rate)
        looped, rate = timed(lambda: tutorial_loop(model, tokenizer, prompts, gen.max_new_tokens))
        loop_rates.append(rate)
        if batched != looped:
            differing = sum(a != b for a, b in zip(batched, looped))
            raise SystemExit(f"batched and one-at-a-time greedy outputs differ on {differing} of {len(prompts)} prompts")
        log.info("repeat %d: batched %.1f tok/s, loop %.1f tok/s", repeat + 1, batched_rates[-1], loop_rates[-1])
    ratios = [b / l for b, l in zip(batched_rates, loop_rates)]
    results = {"generation.batched_tokens_per_s": statistics.median(batched_rates),
               "generation.loop_tokens_per_s": statistics.median(loop_rates),
               "generation.speedup": statistics.median(ratios),
               "generation.speedup_min": min(ratios), "generation.speedup_max": max(ratios)}
    print(f"\ngeneration on models/base: {len(prompts)} prompts, batch size {gen.batch_size}, "
          f"{gen.max_new_tokens} new tokens, {args.repeats} repeats (identical greedy outputs)")
    print(f"  batched (ours)          {results['generation.batched_tokens_per_s']:8.1f} tok/s  "
          f"[{min(batched_rates):.1f} .. {max(batched_rates):.1f}]")
    print(f"  one at a time (loop)    {results['generation.loop_tokens_per_s']:8.1f} tok/s  "
          f"[{min(loop_rates):.1f} .. {max(loop_rates):.1f}]")
    print(f"  speedup                 {results['generation.speedup']:8.2f}x       "
          f"[{min(ratios):.2f} .. {max(ratios):.2f}]")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.bench", description="benchmarks (see module docstring)")
    sub = parser.add_subparsers(dest="what", required=True)
    gen = sub.add_parser("generation", help="batched generation vs the tutorial's one-at-a-time loop")
    gen.add_argument("--prompts", type=int, default=16)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_generation(args)


if __name__ == "__main__":
    cli.run(main)
