"""Evaluating a model on test conversations: selection, generation, scoring, results, tracking.

Used by the baseline and eval stages and by the standalone evaluator, so every model is
scored on the same conversations, with the same generation settings and the same metrics.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

from meddialog import atomic
from meddialog.data.conversations import Dropped, to_turns
from meddialog.data.dataset import read_split
from meddialog.errors import UserError
from meddialog.evaluation.scoring import Embedder, score
from meddialog.modeling.generation import generate, prompt_messages
from meddialog.modeling.loading import chain_precision, load_model, model_chain
from meddialog.modeling.precision import provenance, write_provenance
from meddialog.params import Params
from meddialog.paths import METRICS_DIR
from meddialog.tracking import flatten, start_run

log = logging.getLogger(__name__)



def test_conversations(sources: list[str]) -> list[dict]:
    """Every source's test split, in a stable order."""
    return sorted(read_split(sources, "test"), key=lambda r: r["id"])


def read_conversations(path: Path, system_prompt: str) -> list[dict]:
    """Conversations from a .jsonl or .json file: processed records (`{"id", "messages"}`, as in
    data/processed/<source>/) or raw records in any format the process stage accepts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: test data file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            entries = [(n, json.dumps(r)) for n, r in enumerate(json.loads(text), start=1)]
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    else:
        entries = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = [_conversation(path, number, line, system_prompt) for number, line in entries]
    if not records:
        raise UserError(f"{path} holds no conversations")
    return records


def _conversation(path: Path, number: int, line: str, system_prompt: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number}: expected a JSON object per record")
    try:
        turns = to_turns(record)
    except Dropped as drop:
        raise UserError(f"{path}:{number}: unusable conversation ({drop.reason.replace('_', ' ')})") from None
    if "messages" in record and record["messages"][0].get("role") == "system":
        system_prompt = record["messages"][0]["content"]
    return {"id": str(record.get("id", f"{path.stem}-{number}")),
            "messages": [{"role": "system", "content": system_prompt}] + turns}


Answerer = Callable[[list[list[dict[str, str]]]], list[str]]


def evaluate(answer: Answerer, samples: list[dict], embedder: Embedder) -> tuple[dict, list[dict], float]:
    """Answer `samples` and score the answers; returns (metrics, prediction rows, seconds spent
    generating). The timing stays out of the metrics, which are deterministic on CPU."""
    prompts = [prompt_messages(s["messages"]) for s in samples]
    references = [s["messages"][-1]["content"] for s in samples]  # conversations end with the answer
    started = time.perf_counter()
    predictions = answer(prompts)
    seconds = time.perf_counter() - started
    metrics = score(predictions, references, embedder)
    rows = [{"id": s["id"], "question": p[-1]["content"], "reference": r, "prediction": pred}
            for s, p, r, pred in zip(samples, prompts, references, predictions)]
    return metrics, rows, seconds


def answerer(base: Path, adapters: tuple[Path, ...], precision, params: Params, name: str) -> tuple[Answerer, dict]:
    """How `generation.backend` answers prompts with the chain, and what provenance records of it. The
    transformers model is loaded here, once; a vLLM server is started when the answers are asked for."""
    if params.generation.backend == "vllm":
        from transformers import AutoTokenizer, GenerationConfig

        from meddialog.vllm.backend import served_model, usable_vllm, vllm_answers

        versions = usable_vllm(params)  # a broken or missing vLLM stops here, before any merge
        served = served_model(base, adapters, precision, params)
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=params.model.trust_remote_code)
        config = GenerationConfig.from_pretrained(base) if (Path(base) / "generation_config.json").is_file() else None
        return (lambda prompts: vllm_answers(served, tokenizer, config, prompts, params, name)), \
            {"generation_backend": "vllm", "vllm": versions["vllm"], "vllm_transformers": versions["transformers"],
             "served_model_dir": str(served.model_dir), "vllm_quantization": served.quantization or "none"}
    model, tokenizer = load_model(base, params.model, adapters)
    return (lambda prompts: generate(model, tokenizer, prompts, params.generation)), {"generation_backend": "transformers"}


def write_results(name: str, metrics: dict, rows: list[dict], out_dir: Path = METRICS_DIR) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = out_dir / f"{name}.json"
    predictions_file = out_dir / f"{name}_predictions.jsonl"
    atomic.write_json(metrics_file, metrics, sort_keys=True)
    atomic.write_jsonl(predictions_file, rows)
    return metrics_file, predictions_file


def evaluate_model(stage: str, name: str, model_path: Path, samples: list[dict], params: Params,
                   embedder: Embedder, out_dir: Path = METRICS_DIR) -> dict:
    """Load `model_path` (model or adapter chain), evaluate, write results, log an MLflow run."""
    base, adapters = model_chain(model_path)
    precision = chain_precision(params.model, adapters)
    answer, details = answerer(base, adapters, precision, params, name)
    with start_run(stage, params.mlflow.experiment, run_name=f"{stage}:{name}") as run:
        run.log_params({"model_path": str(model_path), "num_samples": len(samples),
                        **flatten("generation", params.generation), "seed": params.seed})
        metrics, rows, seconds = evaluate(answer, samples, embedder)
        metrics_file, predictions_file = write_results(name, metrics, rows, out_dir)
        write_provenance(name, provenance(precision, model_path=str(model_path),
                                          chain=[str(p) for p in (base, *adapters)], **details), run, out_dir / "provenance")
        run.log_metrics({**metrics, "generation_seconds": seconds})
        run.log_artifact(predictions_file)
    log.info("%s: ROUGE-L %.4f, BLEU %.4f, similarity %.4f on %d conversations (%.1fs generating with %s, %s)",
             name, metrics["rougeL"], metrics["bleu"], metrics["similarity"], len(samples), seconds,
             params.generation.backend, precision.describe())
    return metrics
