"""Stage: the export as GGUF files for llama.cpp and Ollama (models/gguf).

    python -m stages.gguf

Converts models/export to each type in `export.gguf_types` with llama.cpp's converter
(meddialog/export/gguf.py), writes an Ollama Modelfile and a README beside them, then loads every file
back with transformers' GGUF loader and compares its greedy answers to the export's on the first
`export.gguf_check_prompts` evaluated test conversations, into metrics/gguf.json (f32: identical
expected; a quantized type: how many are identical, and how far each follows the export's before diverging).
"""
from __future__ import annotations

import logging
import shutil

from meddialog import atomic, cli
from meddialog.errors import UserError
from meddialog.export.gguf import convert, converter, gguf_name, modelfile
from meddialog.export.parity import EVALUATED_AS, evaluated_prompts, plain_answers
from meddialog.params import load_params
from meddialog.paths import EXPORT_DIR, GGUF_DIR, METRICS_DIR

log = logging.getLogger("gguf")

QUANTIZED = ("q8_0",)  # the Modelfile points at the smallest file


def main() -> None:
    params = load_params()
    types = params.export.gguf_types
    if not (EXPORT_DIR / "config.json").is_file():
        raise UserError(f"{EXPORT_DIR} is not a model directory: run `dvc repro export` first")
    if types:
        converter()  # installed? one line before anything is written
    shutil.rmtree(GGUF_DIR, ignore_errors=True)
    GGUF_DIR.mkdir(parents=True)
    files = {t: convert(EXPORT_DIR, GGUF_DIR / gguf_name(EXPORT_DIR, t), t).name for t in types}
    summary: dict[str, float] = {"files": len(files),
                                 **{f"{t}.size_mb": round((GGUF_DIR / f).stat().st_size / 1e6, 1) for t, f in files.items()}}
    atomic.write_text(GGUF_DIR / "README.md", readme(files))
    if files:
        from transformers import AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(EXPORT_DIR)
        chosen = next((files[t] for t in QUANTIZED if t in files), next(iter(files.values())))
        atomic.write_text(GGUF_DIR / "Modelfile", modelfile(chosen, tokenizer, GenerationConfig.from_pretrained(EXPORT_DIR),
                                                            params.data.system_prompt))
        summary.update(round_trip(files, params))
    atomic.write_json(METRICS_DIR / "gguf.json", summary, sort_keys=True)
    log.info("wrote %s (%s) and metrics/gguf.json", GGUF_DIR, ", ".join(files.values()) or "no GGUF requested")


def round_trip(files: dict[str, str], params) -> dict[str, float]:
    """Greedy answers of each GGUF (through transformers' loader) against the export's, same prompts."""
    count = params.export.gguf_check_prompts
    if count == 0:
        return {}
    _, prompts = evaluated_prompts(METRICS_DIR / f"{EVALUATED_AS[params.export.model]}_predictions.jsonl")
    prompts = prompts[:count]
    length, batch = params.generation.max_new_tokens, params.generation.batch_size
    reference = plain_answers(EXPORT_DIR, prompts, batch, max_new_tokens=length)
    result: dict[str, float] = {}
    for gguf_type, name in files.items():
        answers = plain_answers(GGUF_DIR, prompts, batch, gguf_file=name, max_new_tokens=length)
        same = sum(a == b for a, b in zip(answers, reference))
        shared = sum(shared_prefix(a, b) for a, b in zip(answers, reference)) / len(prompts)
        log.info("%s: %d of %d greedy answers identical to the export's; on average they share the first %.0f%% of "
                 "the export's words", name, same, len(prompts), 100 * shared)
        result.update({f"{gguf_type}.identical": same, f"{gguf_type}.compared": len(prompts),
                       f"{gguf_type}.shared_prefix": round(shared, 4)})
    return result


def shared_prefix(answer: str, reference: str) -> float:
    """The share of `reference`'s words that `answer` repeats before the two first differ (1.0: identical).
    Greedy decoding diverges for good at the first different token, so this says how long a quantized
    model follows the original before its rounding changes one choice."""
    words, expected = answer.split(), reference.split()
    if not expected:
        return float(answer == reference)
    common = next((i for i, (a, b) in enumerate(zip(words, expected)) if a != b), min(len(words), len(expected)))
    return common / len(expected) if answer != reference else 1.0


def readme(files: dict[str, str]) -> str:
    listing = "\n".join(f"- `{name}` ({t})" for t, name in files.items()) or "- none (`export.gguf_types` is empty)"
    return f"""# GGUF files of models/export

Written by `dvc repro gguf` with llama.cpp's converter; they carry the export's chat template and stop
tokens. Agreement with the export's greedy answers: metrics/gguf.json.

{listing}

llama.cpp: `llama-cli -m models/gguf/<file> -cnv` (the chat template is read from the file).
Ollama: `cd models/gguf && ollama create meddialog -f Modelfile && ollama run meddialog`.
"""


if __name__ == "__main__":
    cli.run(main)
