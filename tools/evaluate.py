"""Standalone evaluator (the tutorial's 2_inference.py): score any model on a test file.

    python -m tools.evaluate --model-path models/base \\
        --test-data data/processed/medical_flashcards/test.jsonl --num-samples 50
    python -m tools.evaluate --model-path models/sft --test-data my_test.json --out results/sft.json

--model-path is a Hugging Face model directory (config.json + safetensors) or an adapter
directory written by this pipeline (models/sft, models/grpo: its lineage.json names the base and
the adapters below it). --test-data holds processed records (`{"id", "messages"}`) or raw records
in any format the process stage accepts, as .jsonl or a .json list. Generation settings and the
sample seed come from params.yaml (generation.backend: transformers, or a vLLM server started for the
model, docs/vllm.md); --batch-size and --max-new-tokens override them.
Writes <out>.json (metrics) and <out>_predictions.jsonl, and logs an MLflow run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from meddialog import cli

DEFAULT_OUT_DIR = Path("scratch/evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, type=Path, help="model directory or pipeline adapter directory")
    parser.add_argument("--test-data", required=True, type=Path, help=".jsonl or .json file of conversations")
    parser.add_argument("--num-samples", type=int, default=50, help="seeded selection of this many (default 50)")
    parser.add_argument("--out", type=Path, help=f"metrics file (default {DEFAULT_OUT_DIR}/<model dir name>.json)")
    parser.add_argument("--batch-size", type=int, help="generation batch size (default: generation.batch_size)")
    parser.add_argument("--max-new-tokens", type=int, help="default: generation.max_new_tokens")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from meddialog.data.subsets import seeded_prefix
    from meddialog.errors import UserError
    from meddialog.evaluation.evaluate import evaluate_model, read_conversations
    from meddialog.evaluation.scoring import Embedder
    from meddialog.modeling.loading import model_chain
    from meddialog.params import load_params

    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1 (got {args.num_samples})")
    params = load_params(args.params)
    overrides = {k: v for k, v in {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}.items()
                 if v is not None}
    if any(v < 1 for v in overrides.values()):
        raise UserError("--batch-size and --max-new-tokens must be >= 1")
    params = dataclasses.replace(params, generation=dataclasses.replace(params.generation, **overrides))
    model_chain(args.model_path)  # fail on a bad path before reading data or loading anything heavy
    samples = seeded_prefix(read_conversations(args.test_data, params.data.system_prompt), args.num_samples, params.seed)
    out = args.out or DEFAULT_OUT_DIR / f"{args.model_path.resolve().name}.json"
    metrics = evaluate_model("evaluate", out.stem, args.model_path, samples, params, Embedder(), out_dir=out.parent)
    json.dump(metrics, sys.stdout, indent=2, sort_keys=True)
    print(f"\nwrote {out} and {out.with_name(out.stem + '_predictions.jsonl')}")


if __name__ == "__main__":
    cli.run(main)
