import csv
import json
import time

import pytest

from meddialog.data.subsets import seeded_indices
from tests.conftest import read_jsonl, run_stage, write_params

RECORDS = [{"instruction": "Answer this question truthfully", "input": f"Question {i}?", "output": f"Answer {i}."}
           for i in range(30)]


def source(path, num_samples=0):
    return {"path": str(path), "num_samples": num_samples, "split": "train", "revision": None}


def write_local(path):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    elif path.suffix == ".json":
        path.write_text(json.dumps(RECORDS))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(RECORDS[0]))
            writer.writeheader()
            writer.writerows(RECORDS)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(RECORDS), path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files_are_copied_unchanged(tmp_path, suffix):
    path = tmp_path / f"mine{suffix}"
    write_local(path)
    write_params(tmp_path, **{"data.sources": {"mine": source(path)}, "sft.sources": ["mine"]})
    result = run_stage("download", tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_jsonl(tmp_path / "data" / "raw" / "mine.jsonl") == RECORDS


def test_subset_is_seeded_and_ordered():
    assert seeded_indices(10, 0, 1) == list(range(10))
    assert seeded_indices(10, 20, 1) == list(range(10))
    first = seeded_indices(100, 10, seed=3)
    assert first == seeded_indices(100, 10, seed=3) == sorted(first) and len(first) == 10
    assert first != seeded_indices(100, 10, seed=4)


def test_embedded_default_downloads_offline(project):
    result = run_stage("download", project, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert {p.name for p in (project / "data" / "raw").iterdir()} == {
        "medical_flashcards.jsonl", "healthcaremagic.jsonl", "dialogues.jsonl"}


def test_missing_local_file_is_one_line(tmp_path):
    write_params(tmp_path, **{"data.sources": {"mine": source(tmp_path / "nope.jsonl")}, "sft.sources": ["mine"]})
    result = run_stage("download", tmp_path)
    assert result.returncode == 1 and "nope.jsonl not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env", [
    {"HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens on the discard port: refused
    {"HF_HUB_OFFLINE": "1"},
])
def test_unreachable_hub_fails_fast_with_the_way_out(tmp_path, env):
    hub = {"path": "hf:medalpaca/medical_meadow_medical_flashcards", "num_samples": 1000,
           "split": "train", "revision": None}
    write_params(tmp_path, **{"data.sources": {"medical_flashcards": hub}, "data.hub_mirror": "http://127.0.0.1:9",
                              "sft.sources": ["medical_flashcards"]})
    started = time.monotonic()
    result = run_stage("download", tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "embedded sample" in result.stderr and "data.sources.medical_flashcards.path" in result.stderr
    assert time.monotonic() - started < 60  # generous bound: a hang would take minutes
