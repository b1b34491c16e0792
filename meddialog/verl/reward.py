"""verl's custom reward function: the TRL grpo stage's reward components, weighted by params.yaml.

verl imports this file by its path (`reward.custom_reward_function.path`, set by
meddialog.verl.launch), with the repository on PYTHONPATH, and calls `compute_score` per response.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from meddialog.params import RewardParams, load_params
from meddialog.training.rewards import score_components


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  **kwargs) -> dict[str, float]:
    """verl's custom reward entry point (`custom_reward_function.path/name`).

    The patient's message arrives as `extra_info["question"]` (written by the process stage);
    without it the prompt-dependent component (safety's red-flag check) scores neutrally.
    """
    question = (extra_info or {}).get("question")
    return score_components(solution_str or "", ground_truth or "", question, _default_reward_params())


@lru_cache(maxsize=1)
def _default_reward_params() -> RewardParams:
    """The repository's params.yaml (verl's reward workers do not start in the repository)."""
    return load_params(Path(__file__).resolve().parents[2] / "params.yaml").grpo.rewards
