"""The verl stages' command lines (`--dry-run`), checked in the main environment, which has no verl.

That the commands compose against verl's real configs and run its real code is tested in
tests_verl/ (verl's own virtualenv, `make test-verl`).
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from meddialog.verl.launch import Command, Expanded, hydra_value
from tests.conftest import REPO, run_stage, write_params


def dry_run(stage: str, project) -> list[str]:
    result = run_stage(stage, project, "--dry-run")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def split(line: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of one printed command line."""
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.match(r"[A-Z_]+=", w))
    return env, words[len(env):]


def overrides(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))


def test_sft_dry_run_is_torchrun_with_our_config_data_lora_and_mlflow(project):
    train, export, note = dry_run("verl_sft", project)
    project = project.resolve()
    env, argv = split(train)
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{project / 'mlflow.db'}"
    assert argv[:9] == [str(project / ".venv-verl/bin/python"), "-m", "torch.distributed.run", "--standalone",
                        "--nnodes=1", "--nproc_per_node=1", "-m", "verl.trainer.sft_trainer",
                        f"--config-path={REPO / 'configs/verl'}"]
    assert "--config-name=sft" in argv
    values = overrides(argv)
    assert values["data.train_files"] == str(project / "data/verl/sft_train.parquet")
    assert values["data.val_files"] == str(project / "data/verl/sft_val.parquet")
    assert values["model.path"] == str(project / "models/base")
    assert (values["model.lora_rank"], values["model.lora_alpha"]) == ("16", "32")
    assert values["model.target_modules"] == "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
    assert [values[k] for k in ("data.train_batch_size", "optim.lr", "trainer.total_epochs")] == ["32", "0.0001", "3"]
    assert values["trainer.project_name"] == "meddialog"
    assert values["trainer.default_local_dir"].startswith(str(project / "models/verl/checkpoints/sft-"))

    export_argv = shlex.split(export)
    assert export_argv[1:6] == ["-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    checkpoints = values["trainer.default_local_dir"]
    assert f'"{checkpoints}/global_step_$(cat {checkpoints}/latest_checkpointed_iteration.txt)"' in export
    assert export_argv[-2:] == ["--target_dir", str(project / "models/verl/sft")]
    assert note.startswith("#") and "lora_alpha 32" in note


def test_sft_on_several_nodes_is_one_ray_launch(project):
    write_params(project, **{"verl.nnodes": 2, "verl.n_gpus_per_node": 4})
    _, argv = split(dry_run("verl_sft", project)[0])
    assert argv[1:3] == ["-m", "verl.trainer.sft_trainer_ray"]
    assert "torch.distributed.run" not in argv
    values = overrides(argv)
    assert (values["trainer.nnodes"], values["trainer.n_gpus_per_node"]) == ("2", "4")


def test_grpo_dry_run_is_main_ppo_from_the_merged_sft_model_with_our_reward(project):
    write_params(project, **{"verl.grpo.rollout": "sglang", "verl.grpo.num_generations": 8})
    merge, train, export, _ = dry_run("verl_grpo", project)
    project = project.resolve()
    env, argv = split(train)
    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"] and "--config-name=grpo" in argv
    values = overrides(argv)
    checkpoints = values["trainer.default_local_dir"]
    assert checkpoints.startswith(str(project / "models/verl/checkpoints/grpo-"))
    assert values["actor_rollout_ref.model.path"] == f"{checkpoints}/init"
    assert merge.startswith("#") and f"models/base + models/sft merged into {checkpoints}/init" in merge
    assert values["data.train_files"] == str(project / "data/verl/rl_train.parquet")
    assert values["reward.custom_reward_function.path"] == str(REPO / "meddialog/verl/reward.py")
    assert (values["actor_rollout_ref.rollout.name"], values["actor_rollout_ref.rollout.n"]) == ("sglang", "8")
    assert values["actor_rollout_ref.model.lora_rank"] == "16"
    assert (values["actor_rollout_ref.actor.use_kl_loss"], values["actor_rollout_ref.actor.kl_loss_coef"]) == \
        ("true", "0.04")
    assert values["trainer.save_freq"] == "50"  # > 0, or verl would save no checkpoint to export
    # Ray workers on other nodes get the launch's environment through the job's runtime_env.
    for name in ("PYTHONPATH", "MLFLOW_TRACKING_URI"):
        assert values[f"+ray_kwargs.ray_init.runtime_env.env_vars.{name}"] == hydra_value(env[name])
    assert env["PYTHONPATH"] == str(REPO)  # once, though the test already had it on PYTHONPATH
    assert export.endswith(f'/actor" --target_dir {project / "models/verl/grpo"}')


def test_indivisible_rollout_batch_stops_with_one_line_naming_the_key(project):
    write_params(project, **{"verl.n_gpus_per_node": 3, "verl.sft.batch_size": 33})  # SFT's batch divides
    result = run_stage("verl_grpo", project, "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: verl.grpo.batch_size: batch_size × num_generations = 64 sequences per step must be divisible by "
        "the GPU count (verl.nnodes × verl.n_gpus_per_node = 3) (got 16)")


def test_missing_inputs_stop_before_any_launch(project):
    result = run_stage("verl_sft", project)
    assert result.returncode == 1
    assert "missing data/verl/sft_train.parquet" in result.stderr and "dvc repro" in result.stderr


def test_hydra_values_are_quoted_only_when_hydra_would_misread_them():
    assert [hydra_value(v) for v in (None, True, 1e-05, 16, ["a", "b"], Path("/data/x.parquet"))] == \
        ["null", "true", "1e-05", "16", "[a,b]", "/data/x.parquet"]
    assert hydra_value("/my data/it's,here") == "'/my data/it\\'s,here'"


def test_printed_commands_run_in_bash_and_read_the_checkpoint_step_there(tmp_path):
    (tmp_path / "step").write_text("7\n")
    step = Expanded(f"{tmp_path}/global_step_$(cat {tmp_path}/step)")
    argv = ["sh", "-c", 'printf "%s|" "$@" "$X"', "sh", "key=a b", step]
    result = subprocess.run(["bash", "-c", Command(argv, {"X": "1 2"}).shell()], capture_output=True, text=True)
    assert result.stdout == f"key=a b|{tmp_path}/global_step_7|1 2|"


def test_the_stages_do_not_import_verl():
    code = ("import sys, stages.verl_sft, stages.verl_grpo, meddialog.verl.launch, meddialog.verl.export; "
            "print(any(m == 'verl' or m.startswith('verl.') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("stage", ["verl_sft", "verl_grpo"])
def test_help_names_the_dry_run(stage, project):
    result = run_stage(stage, project, "--help")
    assert result.returncode == 0 and "--dry-run" in result.stdout


def test_grpo_starts_from_the_sft_adapter_merged_into_its_base(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from meddialog.modeling.loading import write_lineage
    from meddialog.params import load_params
    from meddialog.verl.export import merge_sft

    sft = tmp_path / "sft"
    torch.manual_seed(0)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for name, weight in adapter.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: a trained adapter's is not
            weight.data.normal_(std=0.5)
    adapter.save_pretrained(sft)
    write_lineage(sft, tiny_model_dir)

    merge_sft(sft, load_params(REPO / "params.yaml").model, tmp_path / "init")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "init")
    assert (tmp_path / "init/tokenizer.json").is_file() and not (tmp_path / "init.partial").exists()
    tokens = torch.tensor([[1, 42, 7, 99, 5]])
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), sft)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, policy(tokens).logits, atol=1e-5)
        assert not torch.allclose(merged(tokens).logits, base(tokens).logits, atol=1e-3)
