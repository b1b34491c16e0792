"""The process stage on real public records in the tutorial's raw schemas (kept outside the repo)."""
import json
from collections import defaultdict

import pytest

from tests.conftest import REPO, read_jsonl, run_stage, write_jsonl, write_params

REALDATA = REPO.parent / "shared" / "realdata"
FILES = {"healthcaremagic": "chatdoctor5k.json", "medical_flashcards": "medical_meadow_wikidoc_patient_info.json"}


@pytest.mark.skipif(not REALDATA.is_dir(), reason="shared/realdata is not beside this checkout")
def test_real_records_are_kept_and_no_question_crosses_splits(tmp_path):
    sources = {}
    for name, filename in FILES.items():
        write_jsonl(tmp_path / "data" / "raw" / f"{name}.jsonl", json.loads((REALDATA / filename).read_text()))
        sources[name] = {"path": f"data/raw/{name}.jsonl", "num_samples": 0, "split": "train", "revision": None}
    write_params(tmp_path, **{"data.sources": sources, "sft.sources": list(sources)})
    result = run_stage("process", tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert metrics["kept"] / metrics["in"] >= 0.98
    assert metrics["in"] == metrics["kept"] + metrics["dropped"]
    for name in FILES:
        where = defaultdict(set)
        for split in ("train", "val", "test"):
            for record in read_jsonl(tmp_path / "data" / "processed" / name / f"{split}.jsonl"):
                where[record["messages"][1]["content"].lower()].add(split)
        assert all(len(splits) == 1 for splits in where.values())
