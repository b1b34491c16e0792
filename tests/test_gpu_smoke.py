"""The GPU check's plumbing, run on the CPU (`--allow-cpu`) with a tiny model: every check but FSDP
(GPU-only) runs the real stages and writes its figures, so the script a GPU session runs has run before."""
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_stage


def test_gpu_check_refuses_a_cpu_build_in_one_line(project):
    result = run_stage("tools.gpu_check", project)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "CPU-only build" in result.stderr and "GPU install" in result.stderr


def test_unknown_check_is_one_line(project):
    result = run_stage("tools.gpu_smoke", project, "--checks", "sft_4bit,warp_drive", "--allow-cpu")
    assert result.returncode == 1 and "unknown warp_drive" in result.stderr


@pytest.mark.slow
def test_gpu_smoke_runs_its_checks_on_cpu(project, tiny_4bit_model_dir):
    checks = "sft_4bit,adapter_retention,grpo_4bit,generation_bf16,torchrun_1proc,sft_bf16"
    result = run_stage("tools.gpu_smoke", project, "--allow-cpu", "--base", str(tiny_4bit_model_dir), "--checks", checks)
    report = json.loads((project / "scratch/gpu-smoke/report.json").read_text())
    assert list(report) == ["probe", *checks.split(","), "total"], result.stderr[-3000:]
    for name in checks.split(","):
        assert "error" not in report[name], (name, report[name])
    assert report["sft_4bit"]["precision"].startswith("bitsandbytes nf4")
    assert report["sft_4bit"]["lora_A_relative_change"] > 0 and report["sft_4bit"]["adapter_saved"]
    retention = report["adapter_retention"]
    assert set(retention) >= {"chain_rule", "grpo_start", "merge_into_4bit", "bare_4bit_base", "quantization_only"}
    assert report["grpo_4bit"]["lora_A_relative_change"] > 0 and report["grpo_4bit"]["lora_B_change"] > 0
    assert report["generation_bf16"]["dtype"] == "torch.bfloat16" and report["generation_bf16"]["finite_logits"]
    assert report["torchrun_1proc"]["ok"]
    assert all(name in result.stdout for name in checks.split(","))  # the printed table


@pytest.mark.slow
def test_bundle_holds_the_wheels_and_tokenizer(tmp_path):
    """Needs the package registry (as `make setup` does)."""
    out = tmp_path / "bundle"
    result = subprocess.run([sys.executable, "-m", "tools.gpu_bundle", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {p.name.split("-")[0].lower() for p in (out / "wheels").glob("*.whl")}
    assert names >= {"bitsandbytes", "trl", "datasets", "rouge_score", "nltk", "ruamel_yaml"}
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "run.sh").is_file()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 60 * 2**20  # the device tool carries 64 MiB with the working tree
    shutil.rmtree(out)
