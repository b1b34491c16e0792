"""grpo.use_vllm mapped onto TRL's GRPOConfig, the setups refused before any model loads, and the step
watchdog that ends a stuck rollout instead of hanging the stage."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from meddialog.errors import UserError
from meddialog.modeling.precision import Precision
from meddialog.params import GrpoParams, VllmParams
from meddialog.training.vllm_rollout import rollout_args
from meddialog.training.watchdog import STUCK_EXIT_CODE
from tests.conftest import REPO, make_adapter, run_stage, write_params

CUDA = Precision(device="cuda", dtype="bfloat16", load_in_4bit=False)
ENGINE = VllmParams(max_model_len=3072, startup_timeout_s=123)


@pytest.fixture
def importable_vllm(tmp_path, monkeypatch):
    """A package named vllm on sys.path: what a CUDA training environment with vLLM has (the check only
    asks whether the trainer's interpreter can import vllm; TRL imports it when the trainer starts)."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_off_by_default():
    assert rollout_args(GrpoParams(), ENGINE, Precision("cpu", "float32", False)) == {"use_vllm": False}


def test_colocate_and_server_map_onto_grpo_config(importable_vllm, tmp_path):
    from trl import GRPOConfig

    colocate = rollout_args(GrpoParams(use_vllm=True, vllm_gpu_memory_utilization=0.4), ENGINE, CUDA)
    assert colocate == {"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": 3072,
                        "vllm_gpu_memory_utilization": 0.4}
    server = rollout_args(GrpoParams(use_vllm=True, vllm_mode="server", vllm_server_url="http://10.0.0.2:8000"),
                          ENGINE, CUDA)
    assert server == {"use_vllm": True, "vllm_mode": "server", "vllm_max_model_length": 3072,
                      "vllm_server_base_url": "http://10.0.0.2:8000", "vllm_server_timeout": 123}
    for args in (colocate, server):  # TRL's own config takes every key as it is
        config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **args)
        assert all(getattr(config, key) == value for key, value in args.items())


@pytest.mark.parametrize("precision, says", [
    (Precision("cuda", "bfloat16", True), "peft#2501"),
    (Precision("cpu", "float32", False), "remove_weight=True"),
    (CUDA, 'pip install "trl[vllm]==1.16.0"'),  # this interpreter has no vllm
])
def test_setups_that_cannot_work_are_refused(precision, says):
    with pytest.raises(UserError, match="grpo.use_vllm") as refused:
        rollout_args(GrpoParams(use_vllm=True), ENGINE, precision)
    assert says in str(refused.value)


@pytest.mark.slow
def test_the_grpo_stage_refuses_use_vllm_on_the_cpu_before_loading(tiny_project):
    make_adapter(tiny_project / "models" / "base", tiny_project / "models" / "sft")
    write_params(tiny_project, **{"grpo.use_vllm": True, "grpo.max_steps": 1})
    result = run_stage("grpo", tiny_project)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: grpo.use_vllm on the CPU: vLLM's CPU build cannot take the per-step weight sync")
    assert "Loading weights" not in result.stderr and not (tiny_project / "models" / "grpo").exists()


@pytest.mark.slow
def test_a_stuck_step_ends_the_process_with_a_message():
    """No optimizer step within the timeout: the watchdog names the setting, dumps the stacks, exits 124."""
    script = textwrap.dedent("""
        import logging, time
        logging.basicConfig(level=logging.INFO)
        from meddialog.training.watchdog import StepWatchdog
        watchdog = StepWatchdog(1.5, "grpo.step_timeout_s", hint="LoRA + vLLM rollouts can hang: trl#3671")
        watchdog.start()
        for step in range(1, 4):      # three steps that finish in time
            time.sleep(0.5)
            watchdog.progress(step)
        time.sleep(60)                # then a rollout that never returns
    """)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == STUCK_EXIT_CODE
    assert time.monotonic() - started < 20
    assert "no optimizer step finished in" in result.stderr and "(grpo.step_timeout_s = 1.5) after step 3" in result.stderr
    assert "trl#3671" in result.stderr and 'File "<string>"' in result.stderr  # the stack of the stuck thread


@pytest.mark.slow
def test_a_run_that_keeps_stepping_is_left_alone():
    script = textwrap.dedent("""
        import time
        from meddialog.training.watchdog import StepWatchdog
        watchdog = StepWatchdog(1.0, "grpo.step_timeout_s")
        watchdog.start()
        for step in range(1, 9):
            time.sleep(0.4)
            watchdog.progress(step)
        watchdog.stop()
        time.sleep(2)                 # stopped: a long pause after training is no hang
        print("finished")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "finished", result.stderr
