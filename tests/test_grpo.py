"""The grpo stage end to end on a tiny model: adapter with lineage, history, summary, MLflow."""
import csv
import json
import shutil

import pytest

from tests.conftest import make_adapter, mlflow_runs, run_stage, write_params

pytestmark = pytest.mark.slow


def test_two_step_grpo_run_writes_adapter_and_history(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    make_adapter("models/base", tiny_project / "models" / "sft")
    write_params(tiny_project, **{"grpo.max_steps": 2, "grpo.batch_size": 4, "grpo.num_generations": 2,
                                  "grpo.max_completion_length": 8, "grpo.save_steps": 1, "lora.r": 2,
                                  "lora.alpha": 4, "grpo.rewards.embedding": 0.5})
    result = run_stage("grpo", tiny_project, env={"DVC_EXP_NAME": "grpo-test"})
    assert result.returncode == 0, result.stderr
    out = tiny_project / "models" / "grpo"
    assert (out / "adapter_model.safetensors").is_file()
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["base_model"] == "models/base" and lineage["adapters"] == ["models/sft"]
    with (tiny_project / "metrics" / "grpo_history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"]
    for column in ("reward", "reward_std", "kl", "completion_length", "frac_reward_zero_std", "reward_similarity",
                   "reward_embedding", "reward_length", "reward_coherence", "reward_quality", "reward_safety"):
        assert rows[-1][column] != "", column
    with (tiny_project / "metrics" / "grpo_rewards.csv").open() as f:
        chart = {(r["step"], r["component"]): r["reward"] for r in csv.DictReader(f)}
    assert chart[("2", "total")] == rows[-1]["reward"] and chart[("2", "embedding")] == rows[-1]["reward_embedding"]
    summary = json.loads((tiny_project / "metrics" / "grpo_train.json").read_text())
    assert summary["steps"] == 2 and "reward_last_quarter" in summary and "reward_similarity" in summary
    assert summary["resumed_from_step"] == 0 and summary["seconds_per_step"] == pytest.approx(
        summary["train_runtime_s"] / 2, rel=1e-4)
    (run,) = mlflow_runs(tiny_project)
    assert run.data.tags["stage"] == "grpo" and run.data.tags["dvc_exp_name"] == "grpo-test"
    assert "rewards_similarity_mean" in run.data.metrics and "reward_std" in run.data.metrics
    # the evaluator rebuilds base + sft + grpo from the lineage chain
    evaluated = run_stage("tools.evaluate", tiny_project, "--model-path", "models/grpo", "--test-data",
                          "data/processed/dialogues/test.jsonl", "--num-samples", "2", "--max-new-tokens", "4")
    assert evaluated.returncode == 0, evaluated.stderr

    # Another SFT adapter is another starting policy: a fresh run, not a resume of the finished one.
    shutil.rmtree(tiny_project / "models" / "sft")
    make_adapter("models/base", tiny_project / "models" / "sft")
    again = run_stage("grpo", tiny_project)
    assert again.returncode == 0, again.stderr
    assert len(list((tiny_project / "scratch" / "checkpoints").glob("grpo-*"))) == 2
    assert json.loads((tiny_project / "metrics" / "grpo_train.json").read_text())["train_runtime_s"] > 1


def test_grpo_without_sft_adapter_is_one_line(tiny_project):
    result = run_stage("grpo", tiny_project)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "run the sft stage first" in result.stderr


def test_all_reward_weights_zero_is_a_clear_error(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    make_adapter("models/base", tiny_project / "models" / "sft")
    zeros = {f"grpo.rewards.{name}": 0.0 for name in
             ("similarity", "embedding", "length", "coherence", "quality", "safety")}
    write_params(tiny_project, **zeros)
    result = run_stage("grpo", tiny_project)
    assert result.returncode == 1 and "every weight is 0" in result.stderr


def test_the_zero_spread_warning_is_given_once_above_its_threshold(caplog):
    """Most prompt groups with identical rewards: GRPO's advantages are zero there, nothing is learned."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from stages.grpo import ZERO_STD_WARNING, zero_spread_warning

    callback, state = zero_spread_warning(), TrainerState()
    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    with caplog.at_level("WARNING"):
        for step, share in enumerate([ZERO_STD_WARNING, 0.0, 0.75, 1.0], start=1):
            state.global_step = step
            callback.on_log(args, state, control, logs={"frac_reward_zero_std": share, "reward": 0.1})
        callback.on_log(args, state, control, logs={"loss": 0.1})  # a log without the share
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "grpo"]
    assert len(warnings) == 1 and warnings[0].startswith("75% of prompt groups got identical rewards at step 3")
    assert "grpo.num_generations" in warnings[0]
