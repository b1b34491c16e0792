"""GRPO rewards: pure per-answer scores, the registry, and TRL's reward functions over them.

Each component maps (completion, reference, prompt) to a float in a documented range:

  similarity   [0, 1]   ROUGE-L F1 against the reference answer (the same scorer evaluation uses)
  embedding    [0, 1]   cosine of all-MiniLM-L6-v2 embeddings, clipped at 0 (off unless weighted)
  length       (0, 1]   1 inside [min_ratio, max_ratio] × the reference's word count, decaying
                        smoothly (exp of the relative distance) outside it
  coherence    [0, 1]   1 − share of repeated word 3-grams, times a penalty for degenerate loops
                        (one token or phrase dominating the answer)
  quality      [0, 1]   mean of: not empty, ends with a complete sentence, no leaked role markers
                        or chat-template tokens
  safety       [-1, 1]  −1 for a definitive diagnosis claim or prescription-only dosing; for a
                        patient describing a red-flag symptom (RED_FLAGS), +1 when the answer sends
                        them to urgent care and −0.5 when it does not; 0 otherwise (and 0 when the
                        patient's words are unknown, e.g. verl without extra_info)

`REWARDS` is the registry: a new component is one function and one entry there, plus its weight
in params.yaml's `grpo.rewards` (meddialog.params builds RewardParams from the registry's names and
default weights). Its history column and its line in the reward chart follow from the registry.

The total is the weighted sum (`grpo.rewards.*` weights). TRL gets one reward function per
weighted component (`reward_functions`), so it logs each; verl gets `compute_score`
(meddialog/verl/reward.py), which returns the total and every component. Both score with `REWARDS`, so they cannot disagree.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from meddialog.evaluation.scoring import repetition, rouge_l, words

if TYPE_CHECKING:  # meddialog.params imports this module for the registry's names
    from meddialog.params import RewardParams

# Red flags: symptoms for which any sound reply says "get urgent care now".
RED_FLAGS = (
    r"chest (pain|tightness|pressure)", r"(trouble|difficulty|hard to|can'?t|cannot|struggling to) breath",
    r"short(ness)? of breath", r"face (is )?(drooping|droop)", r"facial droop", r"slurred speech",
    r"(weakness|numbness) (on|in) one side", r"worst headache", r"sudden (severe )?headache",
    r"suicid", r"kill (myself|himself|herself)", r"end (my|his|her) life", r"self[- ]harm",
    r"vomiting blood", r"coughing (up )?blood", r"black (tarry )?stools?", r"severe bleeding",
    r"stiff neck", r"seizure", r"unconscious", r"passed out", r"faint(ed|ing)",
    r"anaphyla", r"(throat|tongue|lips?) (is |are )?swell", r"overdose",
)
URGENT_ADVICE = (
    r"emergency", r"\b(911|999|112|988|ambulance)\b", r"\ber\b", r"a ?&? ?e\b", r"urgent(ly)? (care|medical)",
    r"immediate(ly)? (medical|help|attention|care)", r"right away", r"call (for )?help", r"crisis line",
    r"seek (medical )?(help|care|attention) (now|immediately|urgently|right away)", r"go to (the )?hospital",
)
DEFINITIVE_DIAGNOSIS = (
    r"\byou (definitely|certainly|clearly) have\b", r"\bi am (sure|certain) (that )?you have\b",
    r"\bthe diagnosis is definitely\b", r"\bthis is definitely\b", r"\bi can confirm (that )?you have\b",
    r"\byou (undoubtedly|surely) have\b",
)
# Prescription-only drug classes with an explicit dose: what an assistant must never prescribe.
PRESCRIPTION_DOSING = re.compile(
    r"\b(take|start|use|give)\b[^.]{0,40}?\b(amoxicillin|azithromycin|ciprofloxacin|doxycycline|penicillin|"
    r"metformin|insulin|warfarin|prednisone|prednisolone|oxycodone|morphine|tramadol|codeine|diazepam|"
    r"lorazepam|alprazolam|sertraline|fluoxetine|lisinopril|amlodipine|atorvastatin|levothyroxine|"
    r"metoprolol|gabapentin|antibiotics?)\b[^.]{0,40}?\b\d+(\.\d+)?\s?(mg|mcg|µg|g|ml|units?)\b",
    re.IGNORECASE,
)
LEAKED_MARKERS = re.compile(
    r"<\|[a-z_]+\|>|<\/?s>|\[/?INST\]|<(human|bot)>:|^\s*(patient|doctor|user|assistant|system)\s*:",
    re.IGNORECASE | re.MULTILINE,
)


# ---------------------------------------------------------------- components


def similarity(completion: str, reference: str, prompt: str | None = None) -> float:
    return rouge_l(completion, reference)


def length(completion: str, reference: str, prompt: str | None = None,
           min_ratio: float = 0.5, max_ratio: float = 1.5) -> float:
    target = max(len(words(reference)), 1)
    produced = len(words(completion))
    low, high = min_ratio * target, max_ratio * target
    if low <= produced <= high:
        return 1.0
    distance = (low - produced) if produced < low else (produced - high)
    return math.exp(-distance / target)


def coherence(completion: str, reference: str | None = None, prompt: str | None = None) -> float:
    tokens = words(completion)
    if not tokens:
        return 0.0
    most_common = Counter(tokens).most_common(1)[0][1] / len(tokens)
    # A degenerate loop ("the the the", one phrase over and over) makes one token dominate;
    # ordinary prose rarely has any word above ~10% of an answer of useful length.
    loop_penalty = 1.0 if len(tokens) < 10 or most_common <= 0.2 else max(0.0, 1.0 - 2 * (most_common - 0.2))
    return (1.0 - repetition(completion)) * loop_penalty


def quality(completion: str, reference: str | None = None, prompt: str | None = None) -> float:
    text = completion.strip()
    if not text:
        return 0.0
    complete_sentence = 1.0 if re.search(r"[.!?)\"']\s*$", text) else 0.0
    no_leaks = 0.0 if LEAKED_MARKERS.search(text) else 1.0
    return (1.0 + complete_sentence + no_leaks) / 3


def safety(completion: str, reference: str | None = None, prompt: str | None = None) -> float:
    text = completion.lower()
    if PRESCRIPTION_DOSING.search(completion) or any(re.search(p, text) for p in DEFINITIVE_DIAGNOSIS):
        return -1.0
    if prompt is None or not has_red_flag(prompt):
        return 0.0
    return 1.0 if any(re.search(p, text) for p in URGENT_ADVICE) else -0.5


def has_red_flag(patient_text: str) -> bool:
    text = patient_text.lower()
    return any(re.search(p, text) for p in RED_FLAGS)


def embedding(completion: str, reference: str, prompt: str | None = None) -> float:
    if not completion.strip():
        return 0.0
    return max(0.0, _embedder().cosine([completion], [reference])[0])


@lru_cache(maxsize=1)
def _embedder():
    from meddialog.evaluation.scoring import Embedder

    return Embedder()


# ---------------------------------------------------------------- the registry


class Reward(NamedTuple):
    score: Callable[[str, str, str | None, RewardParams], float]  # (completion, reference, prompt, params)
    default_weight: float = 0.0  # when params.yaml's grpo.rewards leaves the component out


# In this order in TRL's reward list, metrics/grpo_history.csv's columns and verl's reward info.
REWARDS: dict[str, Reward] = {
    "similarity": Reward(lambda c, ref, prompt, params: similarity(c, ref, prompt), default_weight=1.0),
    "embedding": Reward(lambda c, ref, prompt, params: embedding(c, ref, prompt)),
    "length": Reward(lambda c, ref, prompt, params: length(c, ref, prompt, params.length_min_ratio,
                                                           params.length_max_ratio), default_weight=0.5),
    "coherence": Reward(lambda c, ref, prompt, params: coherence(c, ref, prompt), default_weight=0.5),
    "quality": Reward(lambda c, ref, prompt, params: quality(c, ref, prompt), default_weight=0.5),
    "safety": Reward(lambda c, ref, prompt, params: safety(c, ref, prompt), default_weight=1.0),
}
COMPONENTS = tuple(REWARDS)


# ---------------------------------------------------------------- combining


def score_components(completion: str, reference: str, prompt: str | None, params: RewardParams) -> dict[str, float]:
    """Every weighted component (weight 0 = not computed) and the weighted `score`."""
    weights = params.weights
    values = {name: reward.score(completion, reference, prompt, params)
              for name, reward in REWARDS.items() if weights[name] != 0}
    values["score"] = sum(weights[name] * value for name, value in values.items())
    return values


def reward_functions(params: RewardParams) -> tuple[list[Callable], list[float]]:
    """TRL reward functions (one per weighted component) and their weights.

    TRL calls `f(prompts=..., completions=..., reference=[...], question=[...], **kwargs)` with the
    dataset's columns as lists; completions are chat messages or plain strings.
    """
    weighted = {name: weight for name, weight in params.weights.items() if weight != 0}
    return [_trl_reward(name, params) for name in weighted], list(weighted.values())


def _trl_reward(name: str, params: RewardParams) -> Callable:
    score = REWARDS[name].score

    def reward(completions: list[Any], reference: list[str], question: list[str] | None = None, **kwargs) -> list[float]:
        questions = question or [None] * len(completions)
        return [score(_text(c), ref, q, params) for c, ref, q in zip(completions, reference, questions)]

    reward.__name__ = name  # TRL logs rewards/<__name__>/mean
    return reward


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role") == "assistant")
