"""Paired bootstrap intervals: is a difference between two models more than the noise of 50 conversations?

Both models answered the same conversations, so a difference is resampled by conversation: each of the
`resamples` draws picks n conversation ids with replacement and recomputes *both* models' metric on that
draw (paired: the conversation's difficulty cancels out). The interval is the draws' percentile range.
Corpus BLEU is not a mean of per-answer values, so each answer contributes its n-gram counts and lengths
and a draw recomputes corpus BLEU from the summed counts, exactly as NLTK's corpus_bleu does.

`conversation_scores` gives every answer's per-metric values; their mean is the metric in
scoring.score (tests/test_intervals.py holds them to it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meddialog.evaluation.scoring import Embedder, repetition, tokenize, words

BLEU_ORDER = 4
SMOOTHING_EPSILON = 0.1  # NLTK SmoothingFunction().method1's epsilon
# Metrics that are a mean over answers (scoring.score's keys), in report order; "bleu" is the corpus one.
MEAN_METRICS = ("rougeL", "rouge1", "rouge2", "sentence_bleu", "similarity", "answer_words_mean", "repetition",
                "empty_rate")
METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "sentence_bleu", "similarity", "answer_words_mean", "repetition",
           "empty_rate")
# The differences the report shows: (newer, older).
PAIRS = (("sft", "baseline"), ("grpo", "sft"), ("grpo", "baseline"))


@dataclass(frozen=True)
class ConversationScores:
    """One model's answers, one row per conversation (ids in order)."""
    ids: tuple[str, ...]
    values: dict[str, np.ndarray]   # metric → per-answer value (MEAN_METRICS)
    bleu_stats: np.ndarray          # (n, 2 * BLEU_ORDER + 2): matches 1..4, totals 1..4, hypothesis and reference length

    def subset(self, ids: list[str]) -> "ConversationScores":
        index = {cid: i for i, cid in enumerate(self.ids)}
        rows = np.array([index[cid] for cid in ids], dtype=int)
        return ConversationScores(tuple(ids), {k: v[rows] for k, v in self.values.items()}, self.bleu_stats[rows])


@dataclass(frozen=True)
class Difference:
    metric: str
    value: float    # newer − older on all shared conversations
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high


def conversation_scores(rows: list[dict], embedder: Embedder) -> ConversationScores:
    """Per-answer metric values of prediction rows (`id`, `reference`, `prediction`)."""
    from nltk.translate.bleu_score import modified_precision

    from meddialog.evaluation.scoring import _rouge_scorer, sentence_bleu

    predictions = [r["prediction"] for r in rows]
    references = [r["reference"] for r in rows]
    rouge = [_rouge_scorer().score(ref, pred) for pred, ref in zip(predictions, references)]
    stats = []
    for prediction, reference in zip(predictions, references):
        hypothesis, ref_tokens = tokenize(prediction), tokenize(reference)
        orders = [modified_precision([ref_tokens], hypothesis, n) for n in range(1, BLEU_ORDER + 1)]
        stats.append([p.numerator for p in orders] + [p.denominator for p in orders]
                     + [len(hypothesis), len(ref_tokens)])
    values = {
        "rougeL": [s["rougeL"].fmeasure for s in rouge],
        "rouge1": [s["rouge1"].fmeasure for s in rouge],
        "rouge2": [s["rouge2"].fmeasure for s in rouge],
        "sentence_bleu": [sentence_bleu(p, r) for p, r in zip(predictions, references)],
        "similarity": embedder.cosine(predictions, references),
        "answer_words_mean": [len(words(p)) for p in predictions],
        "repetition": [repetition(p) for p in predictions],
        "empty_rate": [float(not p.strip()) for p in predictions],
    }
    return ConversationScores(tuple(r["id"] for r in rows), {k: np.asarray(v, dtype=float) for k, v in values.items()},
                              np.asarray(stats, dtype=float).reshape(len(rows), 2 * BLEU_ORDER + 2))


def corpus_bleu(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 with NLTK's method-1 smoothing from summed counts; `stats` is (..., 10), already summed
    over the conversations of each draw."""
    matches, totals = stats[..., :BLEU_ORDER], stats[..., BLEU_ORDER:2 * BLEU_ORDER]
    hyp_len, ref_len = stats[..., -2], stats[..., -1]
    safe_totals = np.maximum(totals, 1.0)
    precision = np.where(matches == 0, SMOOTHING_EPSILON / safe_totals, matches / safe_totals)
    with np.errstate(divide="ignore"):
        brevity = np.where(hyp_len > ref_len, 1.0,
                           np.where(hyp_len == 0, 0.0, np.exp(1 - ref_len / np.maximum(hyp_len, 1.0))))
    bleu = brevity * np.exp(np.log(precision).mean(axis=-1))
    return np.where(matches[..., 0] == 0, 0.0, bleu)


def paired_differences(newer: ConversationScores, older: ConversationScores, resamples: int, seed: int,
                       confidence: float = 0.95, metrics: tuple[str, ...] = METRICS) -> list[Difference]:
    """newer − older for each metric, with its percentile interval over `resamples` paired draws of the
    conversations both scored (the same draws for every metric)."""
    shared = [cid for cid in newer.ids if cid in set(older.ids)]
    if not shared:
        raise ValueError("the two models share no scored conversation")
    a, b = newer.subset(shared), older.subset(shared)
    draws = np.random.default_rng(seed).integers(0, len(shared), size=(resamples, len(shared)))
    tail = (1 - confidence) / 2 * 100
    out = []
    for metric in metrics:
        if metric == "bleu":
            value = float(corpus_bleu(a.bleu_stats.sum(0)) - corpus_bleu(b.bleu_stats.sum(0)))
            sampled = corpus_bleu(a.bleu_stats[draws].sum(1)) - corpus_bleu(b.bleu_stats[draws].sum(1))
        else:
            diff = a.values[metric] - b.values[metric]
            value, sampled = float(diff.mean()), diff[draws].mean(1)
        low, high = np.percentile(sampled, [tail, 100 - tail])
        out.append(Difference(metric, round(value, 6), round(float(low), 6), round(float(high), 6)))
    return out


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: stays inside [0, 1] and is sensible at 0 or n successes,
    where the normal approximation collapses to a zero-width interval."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return round(float(max(0.0, centre - half)), 6), round(float(min(1.0, centre + half)), 6)
