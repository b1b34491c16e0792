"""Launching sft / grpo (meddialog/training/launch.py): the command each launcher runs, the refusals, the accelerate
configs, and a real two-process DDP run of the sft stage on CPU (torchrun, gloo)."""
import csv
import importlib.util
import json
import shlex
import sys

import pytest
import torch

from tests.conftest import REPO, make_adapter, mlflow_runs, run_stage, write_params
from tests.test_sft import tiny_sft_params

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without CUDA")


def dry_run(project, stage, **train):
    write_params(project, **{f"train.{k}": v for k, v in train.items()})
    result = run_stage("meddialog.training.launch", project, stage, "--dry-run")
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def test_python_launcher_runs_the_stage_itself(project):
    assert dry_run(project, "sft") == [sys.executable, "-m", "stages.sft"]


def test_accelerate_command_names_the_config_and_the_process_count(project):
    assert dry_run(project, "grpo", launcher="accelerate", accelerate_config="zero3", nproc_per_node=4) == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/zero3.yaml",
        "--num_processes=4", "-m", "stages.grpo"]


@no_cuda
def test_auto_process_count_is_one_without_gpus(project):
    assert dry_run(project, "sft", launcher="torchrun") == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "stages.sft"]


def test_unknown_accelerate_config_is_one_line_with_the_valid_names(project):
    write_params(project, **{"train.launcher": "accelerate", "train.accelerate_config": "zero-3"})
    result = run_stage("meddialog.training.launch", project, "sft")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert ("train.accelerate_config: must be one of 'ddp', 'zero2', 'zero3', 'fsdp', got 'zero-3'; "
            "did you mean 'zero3'?") in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_config_without_deepspeed_says_what_to_install(project):
    write_params(project, **{"train.launcher": "accelerate", "train.accelerate_config": "zero2"})
    (project / "configs").symlink_to(REPO / "configs")
    result = run_stage("meddialog.training.launch", project, "sft")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "pip install deepspeed==0.19.8" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"),
                                        ("fsdp", "FSDP")])
def test_accelerate_configs_load_and_leave_gpus_and_process_count_to_the_user(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == kind
    assert config.gpu_ids is None and config.num_processes == -1  # unset: CUDA_VISIBLE_DEVICES and --num_processes


@pytest.mark.slow
def test_two_process_ddp_sft_writes_one_adapter_one_history_one_mlflow_run(tiny_project):
    tiny_sft_params(tiny_project, **{"sft.grad_accum": 2, "train.launcher": "torchrun", "train.nproc_per_node": 2})
    result = run_stage("meddialog.training.launch", tiny_project, "sft", env={"DVC_EXP_NAME": "ddp-test"})
    assert result.returncode == 0, result.stderr
    outputs = [p.relative_to(tiny_project).as_posix() for p in tiny_project.rglob("*")
               if p.name in ("adapter_model.safetensors", "sft_history.csv", "sft_train.json")
               and "checkpoints" not in p.parts and "provenance" not in p.parts]
    assert sorted(outputs) == ["metrics/sft_history.csv", "metrics/sft_train.json", "models/sft/adapter_model.safetensors"]
    assert json.loads((tiny_project / "metrics/provenance/sft_train.json").read_text())["processes"] == 2
    assert not list((tiny_project / "models" / "sft").glob("*.bin"))
    (run,) = mlflow_runs(tiny_project)
    assert run.data.tags["dvc_exp_name"] == "ddp-test"
    summary = json.loads((tiny_project / "metrics" / "sft_train.json").read_text())
    # one process: sft.batch_size 2 × sft.grad_accum 2 = 4 examples per step; two processes: twice that
    assert summary["processes"] == 2 and summary["effective_batch_size"] == 2 * (2 * 2)
    assert run.data.params["effective_batch_size"] == "8"
    with (tiny_project / "metrics" / "sft_history.csv").open() as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["0", "1", "2", "3", "4"]


@pytest.mark.slow
def test_two_process_ddp_grpo_writes_one_adapter_and_one_mlflow_run(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)
    make_adapter("models/base", tiny_project / "models" / "sft")
    write_params(tiny_project, **{"grpo.max_steps": 2, "grpo.batch_size": 2, "grpo.num_generations": 2,
                                  "grpo.max_completion_length": 8, "lora.r": 2, "lora.alpha": 4,
                                  "train.launcher": "torchrun", "train.nproc_per_node": 2})
    result = run_stage("meddialog.training.launch", tiny_project, "grpo")
    assert result.returncode == 0, result.stderr
    assert [p.parent.name for p in tiny_project.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts
            and p.parent.name != "sft"] == ["grpo"]
    assert len(mlflow_runs(tiny_project)) == 1
    summary = json.loads((tiny_project / "metrics" / "grpo_train.json").read_text())
    # grpo.batch_size 2 completions per process and step; two processes: 4
    assert summary["processes"] == 2 and summary["effective_batch_size"] == 2 * 2 and summary["steps"] == 2


@no_cuda
def test_gpu_smoke_refuses_in_one_line_without_cuda(project):
    result = run_stage("tools.gpu_smoke", project)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: gpu-smoke needs a CUDA GPU")
    assert not (project / "scratch").exists()
