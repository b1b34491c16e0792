"""Does the export answer as the pipeline's model did? Checked with plain transformers only.

    python -m meddialog.export.parity --model models/export --predictions metrics/grpo_predictions.jsonl
    python -m meddialog.export.parity --model models/gguf --gguf-file export-f32.gguf --predictions ...

Nothing of this repository's model code runs here (only its prompt selection, `prompt_messages`): the model and tokenizer come from
`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` (a model directory, or a GGUF file through
transformers' `gguf_file=` loader), and answers from plain `model.generate`, with no stop ids, no
sampling settings and no length given: the export's generation_config.json must supply them all. The
prompts are the evaluated test conversations (data/processed/<source>/test.jsonl, found by the ids in
the predictions file), up to their last patient turn, rendered with the tokenizer's chat template.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError
from meddialog.modeling.generation import prompt_messages

PROCESSED = Path("data/processed")
EVALUATED_AS = {"grpo": "grpo", "sft": "sft", "base": "baseline"}  # export.model → its evaluation's file stem


def plain_answers(model_dir: Path, prompts: list[list[dict]], batch_size: int = 16, gguf_file: str | None = None,
                  max_new_tokens: int | None = None) -> list[str]:
    """Greedy (or whatever generation_config.json says) answers of `model_dir` to chat `prompts`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **where)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if gguf_file else "auto", **where)
    if gguf_file:  # a GGUF file carries no generation_config.json; its stop and pad ids are in the tokenizer
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    extra = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    encoded = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths together: less padding
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding_side="left", return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, **extra)
        for index, row in zip(batch, output[:, inputs["input_ids"].shape[1]:]):
            answers[index] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


def evaluated_prompts(predictions_file: Path, processed_dir: Path = PROCESSED) -> tuple[list[dict], list[list[dict]]]:
    """(prediction rows, their prompts): each row's conversation up to its last patient turn."""
    rows = [json.loads(line) for line in Path(predictions_file).read_text(encoding="utf-8").splitlines() if line]
    conversations = {}
    for test_file in sorted(Path(processed_dir).glob("*/test.jsonl")):
        for line in test_file.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            conversations[record["id"]] = record["messages"]
    missing = [row["id"] for row in rows if row["id"] not in conversations]
    if missing:
        raise UserError(f"{len(missing)} evaluated conversations (first: {missing[0]}) are not in "
                        f"{processed_dir}/*/test.jsonl: run `dvc repro process` or `dvc pull`")
    return rows, [prompt_messages(conversations[row["id"]]) for row in rows]


def compare(rows: list[dict], answers: list[str]) -> dict:
    """How many answers equal the recorded predictions, and the ids of those that do not."""
    differing = [row["id"] for row, answer in zip(rows, answers) if answer != row["prediction"]]
    return {"compared": len(rows), "identical": len(rows) - len(differing), "differing_ids": differing}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meddialog.export.parity", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/export"), help="model directory (default models/export)")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model, loaded with transformers' gguf_file=")
    parser.add_argument("--predictions", type=Path, default=Path("metrics/grpo_predictions.jsonl"))
    parser.add_argument("--processed", type=Path, default=PROCESSED, help="processed data (default data/processed)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    for path in (args.model, args.predictions):
        if not path.exists():
            raise UserError(f"{path} does not exist (run `dvc repro export` or `dvc pull`)")
    rows, prompts = evaluated_prompts(args.predictions, args.processed)
    result = compare(rows, plain_answers(args.model, prompts, args.batch_size, args.gguf_file))
    print(f"{result['identical']} of {result['compared']} answers identical to {args.predictions}")
    for conversation_id in result["differing_ids"]:
        print(f"  differs: {conversation_id}")
    sys.exit(0 if not result["differing_ids"] else 1)


if __name__ == "__main__":
    cli.run(main)
