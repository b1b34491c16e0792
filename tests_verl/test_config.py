"""configs/verl/*.yaml plus the launch's overrides compose against verl's packaged configs and pass
verl's own checks: the dataclass conversions its SFT trainer runs, and `validate_config` for PPO."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meddialog.verl.launch import grpo_command, launch_env, sft_command

RUN_DIR = Path("models/verl/checkpoints/run")


def sft_argv(params, root: Path) -> list[str]:
    return sft_command(params, root, Path("models/base"), RUN_DIR).argv


def grpo_argv(params, root: Path, **grpo) -> list[str]:
    params = dataclasses.replace(params, verl=dataclasses.replace(
        params.verl, grpo=dataclasses.replace(params.verl.grpo, **grpo)))
    return grpo_command(params, root, Path("models/base"), RUN_DIR).argv


def test_sft_config_builds_verls_model_engine_optimizer_and_checkpoint_configs(params, verl_project, compose):
    from verl.utils.config import omega_conf_to_dataclass

    config = compose(sft_argv(params, verl_project))
    # What verl.trainer.sft_trainer.SFTTrainer._build_config does first; HFModelConfig loads the
    # model's config and tokenizer from model.path.
    model = omega_conf_to_dataclass(config.model)
    for section in ("engine", "optim", "checkpoint", "profiler"):
        omega_conf_to_dataclass(config[section])
    assert (model.lora_rank, model.lora_alpha) == (params.lora.r, params.lora.alpha)
    assert list(model.target_modules) == params.lora.target_modules
    assert model.tokenizer.pad_token_id is not None
    assert config.data.messages_key == "messages" and config.data.truncation == "right"
    assert config.data.train_files == str(verl_project / "data/verl/sft_train.parquet")
    assert list(config.trainer.logger) == ["console", "mlflow"]
    assert config.trainer.project_name == params.mlflow.experiment
    assert config.trainer.default_local_dir == str(verl_project / RUN_DIR)
    assert config.optim.lr == params.verl.sft.lr


@pytest.mark.parametrize("rollout", ["sglang", "trtllm"])
def test_grpo_config_passes_verls_validate_config(params, verl_project, rollout, compose):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = compose(grpo_argv(params, verl_project, rollout=rollout))
    assert not need_critic(config) and need_reference_policy(config)  # GRPO: no critic; KL loss needs the reference
    validate_config(config, use_reference_policy=True, use_critic=False)
    assert config.algorithm.adv_estimator == "grpo"
    assert config.data.filter_overlong_prompts is True
    assert config.actor_rollout_ref.rollout.name == rollout
    assert config.actor_rollout_ref.rollout.load_format == "safetensors"
    assert config.actor_rollout_ref.rollout.n == params.verl.grpo.num_generations
    assert config.actor_rollout_ref.model.lora_rank == params.lora.r
    assert config.reward.custom_reward_function.name == "compute_score"
    assert Path(config.reward.custom_reward_function.path).samefile(Path(__file__).parents[1] / "meddialog/verl/reward.py")
    assert list(config.trainer.logger) == ["console", "mlflow"]
    assert config.trainer.project_name == params.mlflow.experiment
    # Handed to every Ray worker, on every node: our reward module's imports and the MLflow store.
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.PYTHONPATH.split(os.pathsep)[0] == str(Path(__file__).resolve().parents[1])
    assert env_vars.MLFLOW_TRACKING_URI.startswith("sqlite:///")


@pytest.mark.parametrize("attn_implementation", ["sdpa", "flash_attention_2"])
def test_attention_implementation_reaches_verls_model_config_and_sets_remove_padding(
        params, verl_project, attn_implementation, compose):
    """sdpa needs no flash-attn: remove-padding (flash-attn's packed path) is off with it, on only with
    flash_attention_2, for the SFT model and for GRPO's actor and reference (one model section)."""
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    params = dataclasses.replace(params, verl=dataclasses.replace(params.verl, attn_implementation=attn_implementation))
    sft = compose(sft_argv(params, verl_project))
    grpo = compose(grpo_argv(params, verl_project, rollout="sglang"))
    validate_config(grpo, use_reference_policy=True, use_critic=False)
    remove_padding = attn_implementation == "flash_attention_2"
    for section in (sft.model, grpo.actor_rollout_ref.model):
        assert section.use_remove_padding is remove_padding
        # What verl's FSDP engine loads the model with (HFModelConfig → AutoConfig.from_pretrained).
        assert omega_conf_to_dataclass(section).hf_config._attn_implementation == attn_implementation
    assert grpo.actor_rollout_ref.actor.use_remove_padding is remove_padding  # interpolated from the model's


def test_verl_rejects_what_our_params_validation_rejects(params, verl_project, compose):
    """The divisibility rule meddialog.params enforces is verl's own (validate_config)."""
    from verl.utils.config import validate_config

    config = compose(grpo_argv(params, verl_project, rollout="sglang", batch_size=3, num_generations=3))
    config.trainer.n_gpus_per_node = 2
    with pytest.raises(AssertionError, match="real_train_batch_size \\(9\\) must be divisible"):
        validate_config(config, use_reference_policy=True, use_critic=False)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_the_exact_command_line_composes_in_verls_entry_point(params, verl_project, stage):
    """The launch as the stage runs it (torchrun included for SFT), with Hydra's `--cfg job`:
    verl's own hydra.main composes the config, prints it and stops before training."""
    argv = sft_argv(params, verl_project) if stage == "sft" else grpo_argv(params, verl_project)
    argv[0] = sys.executable  # this environment is verl's
    result = subprocess.run([*argv, "--cfg", "job"], env={**os.environ, **launch_env()}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    logger = printed["trainer"]["logger"]
    assert logger == ["console", "mlflow"]
    model = printed["model"] if stage == "sft" else printed["actor_rollout_ref"]["model"]
    assert model["override_config"]["attn_implementation"] == params.verl.attn_implementation == "sdpa"
    assert model["use_remove_padding"] is False
    if stage == "grpo":
        assert printed["algorithm"]["adv_estimator"] == "grpo"
        assert printed["reward"]["custom_reward_function"]["path"].endswith("meddialog/verl/reward.py")
