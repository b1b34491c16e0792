"""Reading a configured data source: a local file or a Hugging Face hub dataset.

Records come back unchanged (no cleaning here: that is the process stage's job, where every
dropped record is counted). JSON Lines files are passed through line by line, so a malformed
line reaches the process stage and is counted there instead of vanishing here.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from meddialog.data.subsets import seeded_indices
from meddialog.errors import UserError
from meddialog.hub import select_endpoint
from meddialog.params import DataParams, SourceParams

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def read_source(name: str, source: SourceParams, data: DataParams, seed: int) -> list[str]:
    """Return the source's records as JSON lines (subset selected with `seed`)."""
    if source.path.startswith("hf:"):
        return _read_hub(name, source, data, seed)
    lines = _read_local(name, Path(source.path))
    indices = seeded_indices(len(lines), source.num_samples, seed)
    log.info("%s: %d of %d records from %s", name, len(indices), len(lines), source.path)
    return [lines[i] for i in indices]


def _read_local(name: str, path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"data.sources.{name}.path: file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        # Bytes are decoded leniently so one bad line cannot stop the stage; the process stage
        # sees the replacement character and drops that record as 'undecodable'.
        text = path.read_bytes().decode("utf-8", errors="replace")
        return [line for line in text.splitlines() if line.strip()]
    if suffix == ".json":
        return _json_records(name, path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [json.dumps(r, ensure_ascii=False, default=str) for r in pq.read_table(path).to_pylist()]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            return [json.dumps(r, ensure_ascii=False) for r in csv.DictReader(f)]
    raise UserError(f"data.sources.{name}.path: {path} is not one of {', '.join(LOCAL_SUFFIXES)} "
                    "(or use hf:<dataset id> for a hub dataset)")


def _json_records(name: str, path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" dataset files are really JSON Lines.
        return [line for line in text.splitlines() if line.strip()]
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"data.sources.{name}.path: {path} must hold a list of records or JSON Lines")
    return [json.dumps(r, ensure_ascii=False) for r in data]


def _read_hub(name: str, source: SourceParams, data: DataParams, seed: int) -> list[str]:
    dataset_id = source.path[len("hf:"):]
    select_endpoint(
        f"dataset {dataset_id}", data.hub_mirror, data.hub_timeout_s,
        offline_hint=f"to run offline use the embedded sample: set data.sources.{name}.path to a file "
                     "in data/sample/ (the default in params.yaml), e.g. "
                     f"`dvc exp run -S data.sources.{name}.path=data/sample/{name}.jsonl`",
    )
    import datasets  # after select_endpoint: huggingface_hub reads HF_ENDPOINT at import

    try:
        ds = datasets.load_dataset(dataset_id, split=source.split, revision=source.revision)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"data.sources.{name}: cannot load {dataset_id} split {source.split!r}: {err}") from None
    indices = seeded_indices(len(ds), source.num_samples, seed)
    log.info("%s: %d of %d records from %s", name, len(indices), len(ds), source.path)
    return [json.dumps(r, ensure_ascii=False, default=str) for r in ds.select(indices)]
