"""Stage 5 (tutorial step 6): GRPO with TRL's GRPOTrainer on top of the SFT model.

    python -m stages.grpo                                 # one process; `dvc repro grpo` runs it via meddialog.training.launch
    dvc exp run -S grpo.num_generations=8 -S grpo.lr=5e-5
    dvc exp run -S grpo.batch_size=2 -S grpo.num_generations=2 -S grpo.max_completion_length=128 \\
        -S grpo.max_steps=-1                              # the tutorial's settings

The policy is models/base with the SFT adapter merged in full precision (under 4-bit: merged in a CPU
process, then quantized to NF4; never merged into 4-bit weights), plus a new LoRA adapter. For each
prompt of the GRPO subset (data/processed/<source>/train_small.jsonl: the dialogue up to the last
patient turn) it samples `grpo.num_generations` answers, scores them with meddialog/training/rewards.py, and
pushes up the answers that beat their group's mean. How this departs from textbook GRPO: the
reference policy for the KL term (`grpo.beta`) is the merged SFT model (the adapter disabled),
not a separate copy; and rewards are rule-based, scored against the dataset's reference answer.

Why the loss sits near 0: GRPO's advantages are normalised within each group, so they average to
zero, and the logged loss (advantage-weighted ratio, plus beta × KL) starts at ~0 and stays small
even while the policy improves. Watch `reward` (rising), `reward_std` (not collapsing to 0),
`kl` and `frac_reward_zero_std` instead; all are in metrics/grpo_history.csv and MLflow.

This file is the recipe (prompts, rewards, model, TRL config, trainer); meddialog/training/run.py
runs it as it runs sft's: run key, resume, MLflow, outputs (models/grpo, metrics/grpo_train.json).
"""
from __future__ import annotations

import csv
import io
import logging
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from meddialog import atomic, cli
from meddialog.params import load_params
from meddialog.paths import BASE_DIR, GRPO_DIR, METRICS_DIR, SFT_DIR

if TYPE_CHECKING:
    from meddialog.training.run import Trained

log = logging.getLogger("grpo")

# When more than this share of groups has identical rewards, most prompts teach nothing.
ZERO_STD_WARNING = 0.5


def prompt_rows(records: list[dict]) -> list[dict]:
    """GRPO rows: `prompt` (chat up to the last patient turn), `reference` and `question` columns."""
    from meddialog.data.conversations import question_of
    from meddialog.modeling.generation import prompt_messages

    return [{"prompt": prompt_messages(r["messages"]), "reference": r["messages"][-1]["content"],
             "question": question_of(r["messages"])} for r in records]


def history_columns(component_names: list[str]) -> tuple[str, ...]:
    return ("step", "reward", "reward_std", "kl", "completion_length", "frac_reward_zero_std", "loss",
            "grad_norm", "clip_ratio", *(f"reward_{name}" for name in component_names))


def main() -> None:
    params = load_params()
    grpo = params.grpo

    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    from meddialog.data.dataset import read_split
    from meddialog.digests import file_digest
    from meddialog.errors import UserError
    from meddialog.modeling.loading import load_model
    from meddialog.modeling.precision import resolve
    from meddialog.training.rewards import COMPONENTS, reward_functions
    from meddialog.training.run import TrainingRun
    from meddialog.training.trainer import lora_config
    from meddialog.training.vllm_rollout import rollout_args
    from meddialog.training.watchdog import StepWatchdog

    # ------------------------------------------------------------------ seed, data, rewards
    if not (SFT_DIR / "adapter_config.json").is_file():
        raise UserError(f"{SFT_DIR} has no adapter: run the sft stage first (`dvc repro sft`)")
    precision = resolve(params.model)  # 4-bit asked for without bitsandbytes stops here, before any loading
    vllm_args = rollout_args(grpo, params.vllm, precision)  # so does a vLLM rollout that cannot work here
    set_seed(params.seed)
    records = read_split(params.sft.sources, "train_small")
    rewards, weights = reward_functions(grpo.rewards)
    if not rewards:
        raise UserError("grpo.rewards: every weight is 0, so there is nothing to optimise")
    names = [f.__name__ for f in rewards]
    # the starting policy is part of the run: a retrained SFT adapter must not resume the last one's GRPO run
    run = TrainingRun("grpo", params, grpo, precision,
                      key_inputs=(records, file_digest(SFT_DIR / "adapter_model.safetensors")))

    # ------------------------------------------------------------------ trainer arguments (before the model)
    config = run.configure(
        GRPOConfig,
        learning_rate=grpo.lr,
        num_train_epochs=grpo.epochs,
        max_steps=grpo.max_steps,
        per_device_train_batch_size=grpo.batch_size,
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        beta=grpo.beta,
        reward_weights=weights,
        **vllm_args,
    )
    batch = run.effective_batch_size  # completions per optimizer step, all processes

    # ------------------------------------------------------------------ tokenizer, model
    # the SFT chain merged in full precision (then quantized, under 4-bit): the policy and its KL reference
    model, tokenizer = load_model(BASE_DIR, params.model, adapters=(SFT_DIR,), for_training=True)
    dataset = Dataset.from_list(prompt_rows(records))

    # ------------------------------------------------------------------ train, save
    summary = run.train(
        lambda callbacks: GRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=dataset,
                                      processing_class=tokenizer, peft_config=lora_config(params.lora),
                                      callbacks=callbacks),
        announcement=f"GRPO on {len(dataset)} prompts, {grpo.num_generations} completions each, {batch} completions "
                     f"per step ({config.world_size} process(es)), rewards {names} (weights {weights}), "
                     f"{precision.describe()}, rollouts by {f'vLLM ({grpo.vllm_mode})' if grpo.use_vllm else 'generate'}",
        mlflow_params={"prompts": len(dataset)},
        callbacks=(zero_spread_warning(), StepWatchdog(grpo.step_timeout_s, "grpo.step_timeout_s",
                                                       hint="LoRA + vLLM rollouts can hang: trl#3671" if grpo.use_vllm
                                                       else "")),
        adapter_dir=GRPO_DIR, parents=(SFT_DIR,),
        summarize=lambda done: reward_summary(done, names, batch),
        history_columns=history_columns(COMPONENTS),  # every component, blank when off: stable plot columns
        history_rename={"completions/mean_length": "completion_length", "clip_ratio/region_mean": "clip_ratio",
                        **{f"rewards/{n}/mean": f"reward_{n}" for n in names}})
    if summary is not None:
        write_reward_series(METRICS_DIR / "grpo_history.csv", METRICS_DIR / "grpo_rewards.csv")
        log.info("mean reward %.3f (first quarter) -> %.3f (last quarter) in %d steps (%.0f s); adapter in %s",
                 summary["reward_first_quarter"], summary["reward_last_quarter"], summary["steps"],
                 summary["train_runtime_s"], GRPO_DIR)


def write_reward_series(history: Path, out: Path) -> None:
    """The reward chart's data: one row per step and reward (the total and each weighted component),
    long rather than wide, so a component added to the registry reaches `dvc plots` with no edit of
    dvc.yaml (DVC plots name their y columns)."""
    from meddialog.training.rewards import COMPONENTS

    with history.open(newline="") as f:
        steps = list(csv.DictReader(f))
    series = {"total": "reward", **{name: f"reward_{name}" for name in COMPONENTS}}
    text = io.StringIO()
    writer = csv.writer(text)  # "\r\n" line ends, as csv writes them
    writer.writerow(("step", "component", "reward"))
    writer.writerows((row["step"], name, row[column]) for row in steps for name, column in series.items()
                     if row[column] != "")  # blank: the component is off (weight 0)
    atomic.write_text(out, text.getvalue())


def zero_spread_warning():
    """A TrainerCallback that warns once when most prompt groups got identical rewards."""
    from transformers import TrainerCallback

    class ZeroSpreadWarning(TrainerCallback):
        warned = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            share = (logs or {}).get("frac_reward_zero_std")
            if share is not None and share > ZERO_STD_WARNING and not self.warned:
                self.warned = True
                log.warning("%.0f%% of prompt groups got identical rewards at step %d: no learning signal there. "
                            "Raise grpo.num_generations or grpo.temperature, or weight finer-grained rewards "
                            "(grpo.rewards.similarity, .length)", 100 * share, state.global_step)

    return ZeroSpreadWarning()


def reward_summary(done: Trained, names: list[str], batch: int) -> dict[str, float]:
    """The summary's GRPO values: time per step, generated tokens, and the rewards of the first and last
    quarter of the steps (each reward component's over the last quarter)."""
    steps = [e for e in done.trainer.state.log_history if "reward" in e]
    # each step's mean completion length × completions per step (all processes). A resumed run's
    # history holds the earlier steps too: the total counts them (it is the run's, equal to an
    # uninterrupted run's), the rates only the steps this process took in its runtime
    tokens = [batch * e.get("completions/mean_length", 0.0) for e in steps]
    generated_here = sum(t for t, e in zip(tokens, steps) if e["step"] > done.resumed_at)
    return {"seconds_per_step": done.runtime_s / max(done.trainer.state.global_step - done.resumed_at, 1),
            "generated_tokens": sum(tokens), "generated_tokens_per_s": generated_here / done.runtime_s,
            **_quarters(steps, "reward"),
            **{f"reward_{n}": _last_quarter_mean(steps, f"rewards/{n}/mean") for n in names}}


def _quarters(entries: list[dict], key: str) -> dict[str, float]:
    if not entries:
        return {f"{key}_first_quarter": 0.0, f"{key}_last_quarter": 0.0}
    quarter = max(len(entries) // 4, 1)
    return {f"{key}_first_quarter": statistics.fmean(e[key] for e in entries[:quarter]),
            f"{key}_last_quarter": statistics.fmean(e[key] for e in entries[-quarter:])}


def _last_quarter_mean(entries: list[dict], key: str) -> float:
    if not entries:
        return 0.0
    quarter = max(len(entries) // 4, 1)
    return statistics.fmean(e[key] for e in entries[-quarter:])


if __name__ == "__main__":
    cli.run(main)
