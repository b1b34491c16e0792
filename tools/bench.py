"""Benchmarks (not tests): measure where the time goes on this machine.

    python -m tools.bench all [--repeats 3] [--skip-full-repro]     # `make bench`: every part below
    python -m tools.bench matmul [--repeats 3]
    python -m tools.bench generation [--prompts 16] [--batch-size B] [--max-new-tokens N] [--repeats 3]
    python -m tools.bench engines [--prompts 16] [--batch-size B] [--max-new-tokens N] [--repeats 3]
    python -m tools.bench sft [--sft-steps 12] [--repeats 3]
    python -m tools.bench grpo [--grpo-steps 5] [--repeats 3]
    python -m tools.bench pipeline [--full-repro-runs 1] [--noop-runs 5] [--skip-full-repro]

Every figure is the median of its runs, with `<key>_min` and `<key>_max` beside it; the results are
printed as a table and merged into metrics/bench.json (flat, numeric, stable keys), so a part rerun
alone replaces only its own keys.

matmul: the fp32 matmul ceiling of this machine (GFLOP/s of a square torch.mm at torch's default
thread count), measured in the same run as sft, whose MFU is a fraction of it.

generation: tokens/s of the pipeline's batched path (meddialog.modeling.generation: `model.generate`
on length-sorted batches) against the tutorial's way, one prompt at a time with `model.generate` in a
Python loop; same test prompts, model (models/base) and max_new_tokens, batch size from params.yaml's
generation recipe, greedy. Each repeat runs both once, so each ratio pairs runs made close together;
the greedy texts must be identical, or the part fails.

engines: the same greedy prompts (models/base, float32 on the CPU) through the pipeline's generation,
plain batched `model.generate` in the prompts' own order, and a vLLM server (.venv-vllm, started once,
its start timed apart; generation.batch_size requests in flight): tokens/s, and how many answers are
identical to the pipeline's (the fewest over the repeats).

sft / grpo: the real stage (`python -m stages.sft` / `stages.grpo`) with the default recipe of
params.yaml, run for a few steps in a throw-away workspace (params.yaml copied with fewer steps,
links to data/processed and models/, its own MLflow store), and read back from the metrics it
writes. sft: real (non-padding) training tokens/s, achieved FLOP/s and MFU (see
`sft_flops_per_token`), peak resident memory. grpo: seconds per optimizer step, generated
tokens/s, peak resident memory.

pipeline: wall time of `dvc repro` from scratch in a fresh clone of HEAD (`--full-repro-runs`,
default 1: one run is the whole pipeline (docs/performance.md has its duration), and from-scratch
runs vary little next to that), then of a no-op `dvc repro` on that completed clone. With --skip-full-repro the no-op is
timed in this repository, which must then be up to date, and pipeline.full_repro_s is left out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from meddialog import atomic, cli
from meddialog.errors import UserError
from meddialog.params import LoraParams
from meddialog.paths import BASE_DIR, PROCESSED_DIR, SFT_DIR
from tools.workspace import link_inputs, run_module, write_params

log = logging.getLogger("bench")

OUT_FILE = Path("metrics/bench.json")
# What each part reads from the pipeline, and the stage that makes it
INPUTS = {"generation": ((BASE_DIR, "base_model"), (PROCESSED_DIR, "process")),
          "engines": ((BASE_DIR, "base_model"), (PROCESSED_DIR, "process")),
          "sft": ((BASE_DIR, "base_model"), (PROCESSED_DIR, "process")),
          "grpo": ((BASE_DIR, "base_model"), (PROCESSED_DIR, "process"), (SFT_DIR / "adapter_config.json", "sft"))}
# 2048: 2·2048³ = 17 GFLOP per call on 3 × 16 MB matrices, i.e. ~340 FLOP per byte moved, far above what
# a CPU's memory can feed (~10-20 FLOP/byte), so the multiply is compute bound; one call takes ~0.1 s,
# so thread start-up and call overhead vanish, and a sample of several calls stays short.
MATMUL_SIZE = 2048
MATMUL_SAMPLE_S = 1.0  # each repeat keeps multiplying this long, averaging over scheduler noise


# ---------------------------------------------------------------------------------------------- shared

def summary(key: str, values: list[float]) -> dict[str, float]:
    """`key`: the median of `values`, with `key_min` and `key_max`."""
    return {key: statistics.median(values), f"{key}_min": min(values), f"{key}_max": max(values)}


def merge_results(path: Path, results: dict[str, float]) -> dict[str, float]:
    """Write `results` over what `path` already holds, so each part can be rerun on its own."""
    existing = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**existing, **{k: round(float(v), 6) for k, v in results.items()}}
    atomic.write_json(path, merged, sort_keys=True)
    return merged


def print_table(results: dict[str, float]) -> None:
    print(f"\n{'figure':<42}{'median':>12}{'min':>12}{'max':>12}")
    for key, value in results.items():
        if key.endswith(("_min", "_max")):
            continue
        low, high = results.get(f"{key}_min"), results.get(f"{key}_max")
        print(f"{key:<42}{value:>12.4g}" + ("" if low is None else f"{low:>12.4g}{high:>12.4g}"))


def check_inputs(parts: tuple[str, ...]) -> None:
    """Stop before measuring anything when a part's input is missing, not half an hour into `all`."""
    for part in parts:
        for path, stage in INPUTS.get(part, ()):
            if not path.exists():
                raise UserError(f"{path} not found: run `dvc repro {stage}` first")


# ---------------------------------------------------------------------------------------------- matmul

def bench_matmul(args: argparse.Namespace) -> dict[str, float]:
    import torch

    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    c = torch.empty(MATMUL_SIZE, MATMUL_SIZE)
    for _ in range(3):  # warm-up: starts the thread pool and the BLAS library's buffers
        torch.mm(a, b, out=c)
    rates = []
    for _ in range(args.repeats):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < MATMUL_SAMPLE_S:
            torch.mm(a, b, out=c)
            calls += 1
        rates.append(2 * MATMUL_SIZE ** 3 * calls / elapsed / 1e9)
    return {**summary("matmul.gflops", rates), "matmul.size": MATMUL_SIZE, "matmul.threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- generation

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
    from meddialog.data.subsets import seeded_prefix
    from meddialog.evaluation.evaluate import test_conversations
    from meddialog.modeling.generation import generate, prompt_messages
    from meddialog.modeling.loading import load_model
    from meddialog.params import load_params

    params = load_params()
    # the defaults of params.yaml unless overridden: the figure is about the recipe the stages run
    gen = dataclasses.replace(params.generation, batch_size=args.batch_size or params.generation.batch_size,
                              max_new_tokens=args.max_new_tokens or params.generation.max_new_tokens, do_sample=False)
    model, tokenizer = load_model(BASE_DIR, params.model)
    samples = seeded_prefix(test_conversations(list(params.data.sources)), args.prompts, params.seed)
    prompts = [prompt_messages(s["messages"]) for s in samples]
    variants = {"batched": lambda g: generate(model, tokenizer, prompts, g, progress=False),
                "one_at_a_time": lambda g: tutorial_loop(model, tokenizer, prompts, g.max_new_tokens)}

    for run in variants.values():  # warm-up: thread pool, allocator, first-call paths of each variant
        run(dataclasses.replace(gen, max_new_tokens=2))
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(args.repeats):
        # every repeat runs each variant once, starting at a different one, so drift in the machine's
        # speed (other work on the shared cores) falls on all variants alike and each ratio pairs runs
        # made close together
        texts = {}
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            started = time.perf_counter()
            texts[name] = variants[name](gen)
            seconds = time.perf_counter() - started
            tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in texts[name])
            rates[name].append(tokens / seconds)
        if texts["batched"] != texts["one_at_a_time"]:
            differing = sum(a != b for a, b in zip(texts["batched"], texts["one_at_a_time"]))
            raise UserError(f"batched and one-at-a-time greedy texts differ on {differing} of {len(prompts)} prompts")
        log.info("repeat %d: %s", repeat + 1, ", ".join(f"{n} {r[-1]:.1f} tok/s" for n, r in rates.items()))
    ratios = [b / o for b, o in zip(rates["batched"], rates["one_at_a_time"])]
    results = {"generation.prompts": float(len(prompts)), "generation.batch_size": float(gen.batch_size),
               "generation.max_new_tokens": float(gen.max_new_tokens),
               **summary("generation.batched_tokens_per_s", rates["batched"]),
               **summary("generation.loop_tokens_per_s", rates["one_at_a_time"]),
               **summary("generation.speedup", ratios)}
    print(f"\ngeneration on models/base: {len(prompts)} prompts, batch size {gen.batch_size}, "
          f"{gen.max_new_tokens} new tokens, {args.repeats} repeats (identical greedy outputs)")
    rows = (("batched (meddialog.modeling.generation)", rates["batched"], " tok/s"),
            ("one at a time (the tutorial's loop)", rates["one_at_a_time"], " tok/s"),
            ("speedup", ratios, "x"))
    for label, values, unit in rows:
        print(f"  {label:<42}{statistics.median(values):8.2f}{unit:<6} [{min(values):.2f} .. {max(values):.2f}]")
    return results


# ---------------------------------------------------------------------------------------------- engines

def plain_batched(model, tokenizer, prompts, gen) -> list[str]:
    """`model.generate` on the prompts in their own order, `batch_size` at a time, left-padded: the batched
    loop people write first (no length sorting), with the pipeline's decoding settings."""
    import torch

    from meddialog.modeling.generation import generate_kwargs, stop_token_ids, until_stop

    settings = generate_kwargs(tokenizer, model.generation_config, gen)
    stops = set(stop_token_ids(tokenizer, model.generation_config))
    answers = []
    for start in range(0, len(prompts), gen.batch_size):
        inputs = tokenizer.apply_chat_template(prompts[start:start + gen.batch_size], add_generation_prompt=True,
                                               padding=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            output = model.generate(**inputs, **settings)
        answers += [tokenizer.decode(until_stop(row, stops), skip_special_tokens=True).strip()
                    for row in output[:, inputs["input_ids"].shape[1]:].tolist()]
    return answers


def bench_engines(args: argparse.Namespace) -> dict[str, float]:
    """The same greedy prompts through the pipeline's generation, plain batched `model.generate` and a vLLM
    server (started once; its start is timed apart), each repeat running all three; tokens/s and how many
    answers are identical to the pipeline's."""
    from meddialog.data.subsets import seeded_prefix
    from meddialog.evaluation.evaluate import test_conversations
    from meddialog.modeling.generation import generate, prompt_messages, stop_token_ids
    from meddialog.modeling.loading import load_model
    from meddialog.modeling.precision import resolve
    from meddialog.params import load_params
    from meddialog.vllm.backend import usable_vllm
    from meddialog.vllm.client import chat_answers
    from meddialog.vllm.server import ServerSpec, VllmServer

    params = load_params()
    usable_vllm(params)
    gen = dataclasses.replace(params.generation, batch_size=args.batch_size or params.generation.batch_size,
                              max_new_tokens=args.max_new_tokens or params.generation.max_new_tokens, do_sample=False)
    model, tokenizer = load_model(BASE_DIR, params.model)
    samples = seeded_prefix(test_conversations(list(params.data.sources)), args.prompts, params.seed)
    prompts = [prompt_messages(s["messages"]) for s in samples]
    stops = stop_token_ids(tokenizer, model.generation_config)
    spec = ServerSpec(BASE_DIR, params.vllm.served_model_name, resolve(params.model).dtype)
    started = time.perf_counter()
    with VllmServer(params.vllm, spec, log_file=Path("scratch/vllm/bench.log")) as server:
        startup = time.perf_counter() - started
        variants = {"pipeline": lambda g: generate(model, tokenizer, prompts, g, progress=False),
                    "generate_batched": lambda g: plain_batched(model, tokenizer, prompts, g),
                    "vllm": lambda g: chat_answers(server.base_url, spec.served_model_name, prompts, g, stops,
                                                   params.seed, params.vllm.request_timeout_s)}
        for run in variants.values():  # warm-up
            run(dataclasses.replace(gen, max_new_tokens=2))
        rates: dict[str, list[float]] = {name: [] for name in variants}
        identical: dict[str, list[int]] = {name: [] for name in variants}
        names = list(variants)
        for repeat in range(args.repeats):
            texts = {}
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                begun = time.perf_counter()
                texts[name] = variants[name](gen)
                seconds = time.perf_counter() - begun
                rates[name].append(sum(len(tokenizer(a, add_special_tokens=False)["input_ids"])
                                       for a in texts[name]) / seconds)
            for name in names:
                identical[name].append(sum(a == b for a, b in zip(texts[name], texts["pipeline"])))
            log.info("repeat %d: %s", repeat + 1, ", ".join(f"{n} {r[-1]:.1f} tok/s" for n, r in rates.items()))
    results = {"engines.prompts": float(len(prompts)), "engines.batch_size": float(gen.batch_size),
               "engines.max_new_tokens": float(gen.max_new_tokens), "engines.vllm_startup_s": startup,
               **{k: v for name in names for k, v in summary(f"engines.{name}_tokens_per_s", rates[name]).items()},
               **{f"engines.{name}_identical": float(min(identical[name])) for name in names if name != "pipeline"}}
    print(f"\nengines on {BASE_DIR}: {len(prompts)} prompts, {gen.batch_size} at a time, {gen.max_new_tokens} new "
          f"tokens, greedy, {args.repeats} repeats; vLLM started in {startup:.0f} s")
    for name in names:
        same = "" if name == "pipeline" else f"   identical to pipeline: {min(identical[name])}/{len(prompts)}"
        print(f"  {name:<20}{statistics.median(rates[name]):8.2f} tok/s [{min(rates[name]):.2f} .. "
              f"{max(rates[name]):.2f}]{same}")
    return results


# ---------------------------------------------------------------------------------------------- training stages

@dataclasses.dataclass(frozen=True)
class Geometry:
    """What the FLOP count needs to know about the model and its LoRA adapters."""

    matmul_params: int     # N: weights multiplied with activations (tied lm_head included, embedding lookup not)
    lora_params: int       # the adapters' A and B matrices, on every target module of every layer
    attention_width: int   # layers × query heads × head dim: the per-key width of scores and values


def safetensors_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers (8-byte length + JSON), without loading any weight."""
    shapes = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        shapes.update({name: entry["shape"] for name, entry in header.items() if name != "__metadata__"})
    return shapes


def model_geometry(shapes: dict[str, list[int]], config: dict, lora: LoraParams) -> Geometry:
    embedding = next(name for name in shapes if name.endswith("embed_tokens.weight"))
    matrices = {name: shape for name, shape in shapes.items() if len(shape) == 2 and name != embedding}
    # A tied lm_head is stored only as the embedding table, but it is a real [vocab × hidden] matmul.
    tied_head = math.prod(shapes[embedding]) if config.get("tie_word_embeddings") else 0
    # A LoRA adapter on a [out × in] weight adds A (r × in) and B (out × r).
    adapters = sum(lora.r * sum(shape) for name, shape in matrices.items()
                   if name.removesuffix(".weight").rsplit(".", 1)[-1] in lora.target_modules)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return Geometry(matmul_params=sum(math.prod(s) for s in matrices.values()) + tied_head, lora_params=adapters,
                    attention_width=config["num_hidden_layers"] * config["num_attention_heads"] * head_dim)


def sft_flops_per_token(geometry: Geometry, mean_length: float, gradient_checkpointing: bool) -> float:
    """Training FLOPs per real token of LoRA SFT (a multiply-add = 2 FLOPs).

    forward    2N + 2L + A      N = geometry.matmul_params, L = geometry.lora_params
    backward   2N + 4L + 2A     frozen weights: input gradients only (no weight gradients);
                                adapters: input and weight gradients
    recompute  2N + 2L + A      only with gradient checkpointing (the forward again)

    A = 2 matmuls (Q·Kᵀ, scores·V) × 2 FLOPs × attention_width × (s̄ + 1) / 2: causal attention, a query
    at position t sees t keys; s̄ = `mean_length`, the mean real length of a sequence. The backward of
    attention is 2A whatever is trained, since Q, K and V are activations. The exact mean over tokens
    uses (Σ s²)/(Σ s) ≥ s̄ in place of s̄, so A errs low (by well under 1% of the total on the default
    data). Not counted: the embedding lookup (not a matmul), norms, activations, softmax and the
    optimizer (elementwise, a few % at most), and padding (real tokens only). Counted although skipped
    without gradient checkpointing: the input gradient of the first layer's q/k/v (~0.2% of the total).
    """
    attention = 2 * 2 * geometry.attention_width * (mean_length + 1) / 2
    forward = 2 * geometry.matmul_params + 2 * geometry.lora_params + attention
    backward = 2 * geometry.matmul_params + 4 * geometry.lora_params + 2 * attention
    return forward + backward + (forward if gradient_checkpointing else 0)


def bench_sft(args: argparse.Namespace, ceiling_gflops: float) -> dict[str, float]:
    from meddialog.params import load_params

    params = load_params()
    config = json.loads((BASE_DIR / "config.json").read_text())
    geometry = model_geometry(safetensors_shapes(BASE_DIR), config, params.lora)
    steps = args.sft_steps
    overrides = {"sft.max_steps": steps, "sft.resume": "never",
                 # no evaluation or checkpoint inside the timed training; the Trainer still evaluates and
                 # saves once at its last step, so evaluation is cut to one example
                 "sft.eval_steps": steps + 1, "sft.save_steps": steps + 1, "sft.eval_samples": 1}
    rates, achieved, mfus, memory = [], [], [], []
    for run in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
            root = Path(tmp)
            write_params(root, overrides)
            link_inputs(root, (PROCESSED_DIR, BASE_DIR))
            memory.append(run_module("stages.sft", root))
            train = json.loads((root / "metrics/sft_train.json").read_text())
        mean_length = train["tokens_seen"] / (train["steps"] * train["effective_batch_size"])
        flops = sft_flops_per_token(geometry, mean_length, params.sft.gradient_checkpointing)
        rates.append(train["tokens_per_s"])
        achieved.append(train["tokens_per_s"] * flops / 1e9)
        mfus.append(achieved[-1] / ceiling_gflops)
        log.info("sft run %d/%d: %.1f tokens/s, %.2f GFLOP/s (MFU %.3f), peak RSS %.0f MB", run + 1, args.repeats,
                 rates[-1], achieved[-1], mfus[-1], memory[-1])
    return {**summary("sft.tokens_per_s", rates), **summary("sft.gflops", achieved), **summary("sft.mfu", mfus),
            **summary("sft.peak_rss_mb", memory), "sft.flops_per_token": flops,
            "sft.matmul_params": geometry.matmul_params, "sft.lora_params": geometry.lora_params, "sft.steps": steps}


def bench_grpo(args: argparse.Namespace) -> dict[str, float]:
    steps = args.grpo_steps
    overrides = {"grpo.max_steps": steps, "grpo.resume": "never", "grpo.save_steps": steps + 1}
    step_times, rates, memory = [], [], []
    for run in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
            root = Path(tmp)
            write_params(root, overrides)
            link_inputs(root, (PROCESSED_DIR, BASE_DIR, SFT_DIR))
            memory.append(run_module("stages.grpo", root))
            train = json.loads((root / "metrics/grpo_train.json").read_text())
        step_times.append(train["seconds_per_step"])
        rates.append(train["generated_tokens_per_s"])
        log.info("grpo run %d/%d: %.1f s/step, %.1f generated tokens/s, peak RSS %.0f MB", run + 1, args.repeats,
                 step_times[-1], rates[-1], memory[-1])
    return {**summary("grpo.seconds_per_step", step_times), **summary("grpo.generated_tokens_per_s", rates),
            **summary("grpo.peak_rss_mb", memory), "grpo.steps": steps}


# ---------------------------------------------------------------------------------------------- pipeline

def timed_dvc(workspace: Path, *dvc_args: str) -> float:
    """Seconds `dvc <args>` takes in `workspace`, with this virtualenv's `python` first on PATH as stages need."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}"}
    env.pop("PYTHONPATH", None)  # the workspace's own stages/, not this checkout's
    started = time.perf_counter()
    result = subprocess.run([str(bin_dir / "dvc"), *dvc_args], cwd=workspace, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise UserError(f"`dvc {' '.join(dvc_args)}` failed in {workspace}:\n{tail}")
    return seconds


def noop_repro_times(workspace: Path, runs: int) -> list[float]:
    # dvc.yaml: what `dvc repro` without targets reproduces (not pipelines/verl/dvc.yaml, which needs GPUs)
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json", "dvc.yaml"],
                            cwd=workspace, capture_output=True, text=True)
    if status.returncode or json.loads(status.stdout or "{}"):
        raise UserError(f"{workspace} is not up to date (see `dvc status`), so `dvc repro` would not be a no-op: "
                        "run `dvc repro` first, or time a full repro (leave out --skip-full-repro)")
    return [timed_dvc(workspace, "repro") for _ in range(runs)]


def bench_pipeline(args: argparse.Namespace) -> dict[str, float]:
    if args.skip_full_repro:
        return summary("pipeline.noop_repro_s", noop_repro_times(Path.cwd(), args.noop_runs))
    full, noop = [], []
    for run in range(args.full_repro_runs):
        with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
            clone = Path(tmp) / "repo"
            subprocess.run(["git", "clone", "--quiet", str(Path.cwd()), str(clone)], check=True)
            log.info("full `dvc repro` %d/%d in a fresh clone of HEAD (%s)", run + 1, args.full_repro_runs, clone)
            full.append(timed_dvc(clone, "repro"))
            log.info("full repro: %.0f s", full[-1])
            if run == args.full_repro_runs - 1:  # the no-op on a completed workspace: the last clone
                noop = noop_repro_times(clone, args.noop_runs)
    return {**summary("pipeline.full_repro_s", full), **summary("pipeline.noop_repro_s", noop)}


# ---------------------------------------------------------------------------------------------- command line

PARTS: dict[str, Callable[[argparse.Namespace, dict[str, float]], dict[str, float]]] = {
    "matmul": lambda args, _: bench_matmul(args),
    "generation": lambda args, _: bench_generation(args),
    "engines": lambda args, _: bench_engines(args),
    "sft": lambda args, so_far: bench_sft(args, so_far["matmul.gflops"]),
    "grpo": lambda args, _: bench_grpo(args),
    "pipeline": lambda args, _: bench_pipeline(args),
}
# sft's MFU is a fraction of the ceiling measured in the same run, so sft alone measures matmul too
SUBCOMMANDS = {"matmul": ("matmul",), "generation": ("generation",), "engines": ("engines",), "sft": ("matmul", "sft"), "grpo": ("grpo",),
               "pipeline": ("pipeline",), "all": tuple(PARTS)}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repeats", type=positive, default=3, help="runs per figure (median, min, max)")
    common.add_argument("--out", type=Path, default=OUT_FILE, help="JSON file the results are merged into")
    options = {name: argparse.ArgumentParser(add_help=False) for name in PARTS}
    options["generation"].add_argument("--prompts", type=positive, default=16)
    options["generation"].add_argument("--batch-size", type=positive, help="default: generation.batch_size")
    options["generation"].add_argument("--max-new-tokens", type=positive, help="default: generation.max_new_tokens")
    options["engines"] = options["generation"]  # the same prompts and lengths
    options["sft"].add_argument("--sft-steps", type=positive, default=12, help="optimizer steps per sft run")
    options["grpo"].add_argument("--grpo-steps", type=positive, default=5, help="optimizer steps per grpo run")
    options["pipeline"].add_argument("--full-repro-runs", type=positive, default=1,
                                     help="from-scratch `dvc repro` runs (~10 min each on 2 CPU cores)")
    options["pipeline"].add_argument("--noop-runs", type=positive, default=5, help="no-op `dvc repro` runs")
    options["pipeline"].add_argument("--skip-full-repro", action="store_true",
                                     help="time only the no-op, in this (up-to-date) repository")
    helps = {"matmul": "fp32 matmul ceiling (GFLOP/s)", "generation": "batched generation vs the tutorial's loop",
             "engines": "pipeline generation vs plain batched generate vs vLLM",
             "sft": "sft stage: tokens/s, FLOP/s, MFU, memory", "grpo": "grpo stage: s/step, generated tokens/s",
             "pipeline": "`dvc repro` from scratch and no-op", "all": "every part, in this order"}
    top = argparse.ArgumentParser(prog="python -m tools.bench", description="benchmarks (see module docstring)")
    sub = top.add_subparsers(dest="what", required=True)
    for name, parts in SUBCOMMANDS.items():
        sub.add_parser(name, help=helps[name], parents=[common, *dict.fromkeys(options[p] for p in parts)])
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    check_inputs(SUBCOMMANDS[args.what])
    results: dict[str, float] = {}
    for part in SUBCOMMANDS[args.what]:
        results.update(PARTS[part](args, results))
    merge_results(args.out, results)
    print_table(results)
    print(f"\nmerged into {args.out}")


if __name__ == "__main__":
    cli.run(main)
