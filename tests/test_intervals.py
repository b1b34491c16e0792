"""Paired bootstrap intervals (meddialog/evaluation/intervals.py): per-answer values that average to the
reported metrics, corpus BLEU from summed counts equal to NLTK's, and intervals that see a real shift."""
from __future__ import annotations

import json

import pytest

from meddialog.evaluation.intervals import (
    MEAN_METRICS,
    conversation_scores,
    corpus_bleu,
    paired_differences,
    wilson_interval,
)
from meddialog.evaluation.scoring import score
from tests.conftest import REPO


class FakeEmbedder:
    """Cosine is the share of shared words: the bootstrap needs per-answer values, not MiniLM itself."""

    def cosine(self, predictions, references):
        out = []
        for p, r in zip(predictions, references):
            a, b = set(p.lower().split()), set(r.lower().split())
            out.append(len(a & b) / max(len(a | b), 1) if p.strip() else 0.0)
        return out


def rows(texts: list[tuple[str, str]]) -> list[dict]:
    return [{"id": f"c{i}", "question": "q", "reference": ref, "prediction": pred} for i, (pred, ref) in enumerate(texts)]


SAMPLE = rows([("take rest and fluids for the fever", "rest, drink fluids and take paracetamol for the fever"),
               ("see a doctor about the rash today", "the rash needs a doctor to look at it"),
               ("", "an empty answer scores zero"),
               ("the the the the", "repetition is penalised in the repetition metric"),
               ("call emergency services now, this could be a stroke", "call emergency services now: a stroke")] * 3)


def test_per_answer_values_average_to_the_reported_metrics():
    embedder = FakeEmbedder()
    reported = score([r["prediction"] for r in SAMPLE], [r["reference"] for r in SAMPLE], embedder)
    scores = conversation_scores(SAMPLE, embedder)
    for metric in MEAN_METRICS:
        assert scores.values[metric].mean() == pytest.approx(reported[metric], abs=1e-6), metric
    assert float(corpus_bleu(scores.bleu_stats.sum(0))) == pytest.approx(reported["bleu"], abs=1e-6)


def sample_answer_rows() -> list[dict]:
    """Real medical text in every n-gram regime: each sample answer scored against itself cut to its first
    half (high overlap), against the next record's answer (little), and an empty answer (none)."""
    from meddialog.data.conversations import to_turns

    answers = [to_turns(json.loads(line))[-1]["content"]
               for line in (REPO / "data" / "sample" / "healthcaremagic.jsonl").read_text().splitlines()[:40]]
    half = [" ".join(a.split()[: len(a.split()) // 2]) for a in answers]
    texts = list(zip(half, answers)) + list(zip(answers[1:], answers)) + [("", answers[0])]
    return rows(texts)


def test_corpus_bleu_from_counts_equals_nltk_on_real_text():
    data = sample_answer_rows()
    nltk_bleu = score([r["prediction"] for r in data], [r["reference"] for r in data], FakeEmbedder())["bleu"]
    stats = conversation_scores(data, FakeEmbedder()).bleu_stats
    assert 0.05 < nltk_bleu < 0.9  # neither degenerate end
    assert float(corpus_bleu(stats.sum(0))) == pytest.approx(nltk_bleu, abs=1e-6)  # NLTK's, in scoring.score
    some = conversation_scores(data[::3], FakeEmbedder())
    nltk_some = score([r["prediction"] for r in data[::3]], [r["reference"] for r in data[::3]], FakeEmbedder())["bleu"]
    assert float(corpus_bleu(some.bleu_stats.sum(0))) == pytest.approx(nltk_some, abs=1e-6)  # any subset, as a draw


def test_identical_models_have_a_zero_interval_and_a_shift_is_seen():
    embedder = FakeEmbedder()
    same = conversation_scores(SAMPLE, embedder)
    for d in paired_differences(same, same, 1000, seed=0):
        assert d.value == d.low == d.high == 0.0
    better = conversation_scores([{**r, "prediction": r["reference"]} for r in SAMPLE], embedder)
    rouge = {d.metric: d for d in paired_differences(better, same, 1000, seed=0)}["rougeL"]
    assert rouge.value > 0 and rouge.low > 0 and not rouge.within_noise


def test_intervals_are_seeded_and_paired_on_shared_conversations():
    embedder = FakeEmbedder()
    a = conversation_scores(SAMPLE, embedder)
    b = conversation_scores([{**r, "prediction": r["prediction"] + " rest"} for r in SAMPLE[:10]], embedder)
    first = paired_differences(b, a, 1000, seed=7)
    assert first == paired_differences(b, a, 1000, seed=7)
    assert first != paired_differences(b, a, 1000, seed=8)
    # the value is over the 10 shared conversations only
    shared = a.subset(list(b.ids))
    rouge = {d.metric: d for d in first}["rougeL"]
    assert rouge.value == pytest.approx(float((b.values["rougeL"] - shared.values["rougeL"]).mean()), abs=1e-6)
    with pytest.raises(ValueError, match="share no"):
        other = [{**row, "id": "elsewhere"} for row in rows([("x", "y")])]
        paired_differences(b, conversation_scores(other, embedder), 1000, seed=0)


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-5)
    low, high = wilson_interval(0, 22)
    assert low == 0.0 and high == pytest.approx(0.148655, abs=1e-5)  # not the zero-width normal interval
    assert wilson_interval(22, 22)[1] == 1.0
