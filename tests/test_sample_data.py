"""The embedded sample in data/sample/: counts, schema, uniqueness, and that process keeps all of it."""
import itertools
import json
import re
from pathlib import Path

import pytest

from meddialog.data.conversations import to_turns
from tests.conftest import read_jsonl, run_stage

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
FLASHCARD_INSTRUCTION = "Answer this question truthfully"
CONSULT_INSTRUCTION = "If you are a doctor, please answer the medical questions based on the patient's description."


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def trigrams(text):
    w = words(text)
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def max_trigram_overlap(texts):
    """Largest share of word 3-grams two texts have in common (of the smaller text's 3-grams)."""
    grams = [trigrams(t) for t in texts]
    worst = 0.0
    for a, b in itertools.combinations(grams, 2):
        if a and b:
            worst = max(worst, len(a & b) / min(len(a), len(b)))
    return worst


@pytest.mark.parametrize("filename, instruction, minimum", [
    ("medical_flashcards.jsonl", FLASHCARD_INSTRUCTION, 400),
    ("healthcaremagic.jsonl", CONSULT_INSTRUCTION, 200),
])
def test_single_turn_files(filename, instruction, minimum):
    records = read_jsonl(SAMPLE / filename)
    assert len(records) >= minimum
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    assert all(r["instruction"] == instruction and r["input"].strip() and r["output"].strip() for r in records)
    questions = [" ".join(words(r["input"])) for r in records]
    assert len(set(questions)) == len(questions), "no two questions the same"
    assert max_trigram_overlap([r["input"] for r in records]) <= 0.8, "no template near-duplicates"


def test_consultation_replies_are_60_to_200_words():
    lengths = [len(r["output"].split()) for r in read_jsonl(SAMPLE / "healthcaremagic.jsonl")]
    assert min(lengths) >= 60 and max(lengths) <= 200


def test_dialogues_are_multi_turn_in_two_formats():
    records = read_jsonl(SAMPLE / "dialogues.jsonl")
    assert len(records) >= 80
    formats = {("conversations" if "conversations" in r else "text") for r in records}
    assert formats == {"conversations", "text"}
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        turns = to_turns(record)
        patient_turns = sum(t["role"] == "user" for t in turns)
        assert 2 <= patient_turns <= 4, record["id"]
        assert "?" in turns[1]["content"], f"{record['id']}: the doctor asks a clarifying question first"
    openings = [to_turns(r)[0]["content"] for r in records]
    assert max_trigram_overlap(openings) <= 0.8


def test_data_card_exists():
    card = (SAMPLE / "README.md").read_text()
    for topic in ("licen", "intended use", "limitation"):
        assert topic in card.lower()


def test_every_sample_record_survives_the_process_stage(project):
    assert run_stage("download", project).returncode == 0
    result = run_stage("process", project)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    expected = sum(len(read_jsonl(p)) for p in SAMPLE.glob("*.jsonl"))
    assert metrics["in"] == expected and metrics["kept"] == expected and metrics["dropped"] == 0
