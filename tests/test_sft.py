"""SFT: the loss mask, and the stage end to end on a tiny model (adapter, history, MLflow, resume)."""
import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from meddialog.training.chat_data import tokenize_conversation
from tests.conftest import REPO, mlflow_client, mlflow_runs, run_stage, write_params

TWO_TURNS = [
    {"role": "system", "content": "You are a careful medical assistant."},
    {"role": "user", "content": "I have had a cough for a week."},
    {"role": "assistant", "content": "Do you have a fever or any trouble breathing?"},
    {"role": "user", "content": "A mild fever, no breathing trouble."},
    {"role": "assistant", "content": "Rest, drink fluids, and see a doctor if it lasts beyond three weeks."},
]


def trained_text(tokenizer, example):
    return tokenizer.decode([t for t, m in zip(example["input_ids"], example["assistant_masks"]) if m])


def test_mask_covers_every_assistant_turn_and_nothing_else(embedded_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_tokenizer_dir)
    example = tokenize_conversation(tokenizer, TWO_TURNS, max_length=1024)
    assert trained_text(tokenizer, example) == (
        "Do you have a fever or any trouble breathing?<|im_end|>\n"
        "Rest, drink fluids, and see a doctor if it lasts beyond three weeks.<|im_end|>\n")
    untrained = tokenizer.decode([t for t, m in zip(example["input_ids"], example["assistant_masks"]) if not m])
    for turn in TWO_TURNS:
        if turn["role"] != "assistant":
            assert turn["content"] in untrained
    assert "<|im_start|>assistant" in untrained  # the role header is context, not a target


def test_trl_labels_follow_the_mask(tiny_model_dir):
    """Build the real SFTTrainer and read the labels it will train on."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    example = tokenize_conversation(tokenizer, TWO_TURNS, max_length=1024)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(output_dir="/tmp/unused-sft-test", report_to="none", max_length=1024, bf16=False),
        train_dataset=Dataset.from_list([example]), processing_class=tokenizer,
        peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, input_ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    assert [label != -100 for label in labels] == [bool(m) for m in example["assistant_masks"]]
    assert all(label == token for label, token in zip(labels, input_ids) if label != -100)


def tiny_sft_params(project, **extra):
    write_params(project, **{"sft.max_steps": 4, "sft.batch_size": 2, "sft.eval_samples": 4, "sft.eval_steps": 2,
                             "sft.save_steps": 2, "sft.max_length": 128, "sft.max_samples": 16, "lora.r": 2,
                             "lora.alpha": 4, **extra})


@pytest.mark.slow
def test_sft_stage_writes_adapter_history_summary_and_mlflow_run(tiny_project):
    tiny_sft_params(tiny_project)
    result = run_stage("sft", tiny_project, env={"DVC_EXP_NAME": "sft-test"})
    assert result.returncode == 0, result.stderr
    out = tiny_project / "models" / "sft"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not list(out.glob("*.bin")) and (out / "tokenizer.json").is_file()
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["base_model"] == "models/base" and lineage["adapters"] == [] and lineage["run_key"]
    with (tiny_project / "metrics" / "sft_history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm"]
    assert rows[0]["step"] == "0" and rows[0]["eval_loss"]  # eval before training
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"] and all(r["loss"] for r in rows[1:])
    summary = json.loads((tiny_project / "metrics" / "sft_train.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] > 0 and summary["tokens_per_s"] > 0
    (run,) = mlflow_runs(tiny_project)
    assert run.data.tags["stage"] == "sft" and run.data.tags["dvc_exp_name"] == "sft-test"
    assert run.data.params["sft.max_steps"] == "4" and run.data.params["effective_batch_size"] == "2"
    history = mlflow_client(tiny_project).get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    # the evaluator rebuilds base + adapter from lineage.json
    evaluated = run_stage("tools.evaluate", tiny_project, "--model-path", "models/sft", "--test-data",
                          "data/processed/dialogues/test.jsonl", "--num-samples", "2", "--max-new-tokens", "4")
    assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.slow
def test_sft_is_deterministic_on_cpu(tiny_project):
    """Same losses and the same adapter bytes (so the same DVC hash), also across Python's per-process
    string hashing, which orders the set PEFT keeps target_modules in."""
    tiny_sft_params(tiny_project, **{"sft.max_steps": 2, "sft.resume": "never"})
    runs = []
    for hash_seed in ("1", "2"):
        assert run_stage("sft", tiny_project, env={"PYTHONHASHSEED": hash_seed}).returncode == 0
        adapter = tiny_project / "models" / "sft"
        runs.append([(tiny_project / "metrics" / "sft_history.csv").read_text(),
                     (adapter / "adapter_config.json").read_bytes(), (adapter / "adapter_model.safetensors").read_bytes()])
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_killed_sft_run_resumes_from_its_last_checkpoint_to_the_uninterrupted_result(tiny_project):
    tiny_sft_params(tiny_project, **{"sft.max_steps": 12, "sft.save_steps": 1, "sft.eval_steps": 12})
    env = {"PYTHONPATH": str(REPO)}
    import os

    process = subprocess.Popen([sys.executable, "-m", "stages.sft"], cwd=tiny_project, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tiny_project / "scratch" / "checkpoints").glob("sft-*/checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_stage("sft", tiny_project)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    # a checkpoint cut short by the kill (no trainer_state.json) is skipped, not resumed from
    assert "Can't find a valid checkpoint" not in result.stderr
    summary = json.loads((tiny_project / "metrics" / "sft_train.json").read_text())
    resumed_at = int(re.search(r"resuming from \S+checkpoint-(\d+)", result.stderr).group(1))
    assert summary["steps"] == 12 and summary["resumed_from_step"] == resumed_at >= 1
    # the rate covers the tokens this run trained on, not those before the kill
    assert summary["tokens_per_s"] * summary["train_runtime_s"] < summary["tokens_seen"] - 1
    adapter = (tiny_project / "models" / "sft" / "adapter_model.safetensors").read_bytes()
    history = (tiny_project / "metrics" / "sft_history.csv").read_text()

    # the same params again: the finished run's checkpoints are cleared and it trains from the start
    fresh = run_stage("sft", tiny_project)
    assert fresh.returncode == 0 and "is the end of a finished run" in fresh.stderr, fresh.stderr[-3000:]
    uninterrupted = json.loads((tiny_project / "metrics" / "sft_train.json").read_text())
    assert uninterrupted["resumed_from_step"] == 0
    assert (tiny_project / "models" / "sft" / "adapter_model.safetensors").read_bytes() == adapter
    assert (tiny_project / "metrics" / "sft_history.csv").read_text() == history
    # the resumed run's summary covers the whole run, not only the steps after the kill
    for key in ("train_loss", "tokens_seen", "eval_loss", "lora_A_relative_change", "lora_B_change"):
        assert summary[key] == pytest.approx(uninterrupted[key], rel=1e-6), key


def test_incomplete_checkpoints_are_skipped(tmp_path):
    from meddialog.training.run import last_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # killed while saving
    assert last_checkpoint(tmp_path, "auto") == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(tmp_path, "never") is None
    assert last_checkpoint(tmp_path / "missing", "auto") is None


def test_a_finished_run_is_not_resumed_and_its_checkpoints_are_cleared(tmp_path):
    """HF's Trainer resumed from a run's last checkpoint takes one step past max_steps; the fresh run
    must not write over the finished run's checkpoint directories in place (a kill midway would leave
    new weights beside an old trainer_state.json)."""
    from meddialog.training.run import last_checkpoint

    def checkpoints():
        for step in (12, 24):
            (tmp_path / f"checkpoint-{step}").mkdir()
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
                json.dumps({"global_step": step, "max_steps": 24}))

    checkpoints()
    (tmp_path / "README.md").write_text("not a checkpoint")
    assert last_checkpoint(tmp_path, "auto") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
    checkpoints()
    (tmp_path / "checkpoint-24" / "trainer_state.json").unlink()  # killed while saving the last one
    assert last_checkpoint(tmp_path, "auto") == str(tmp_path / "checkpoint-12")
    assert (tmp_path / "checkpoint-24").is_dir()  # rewritten in full when the resumed run reaches it


@pytest.mark.slow
def test_rerunning_a_finished_sft_gives_the_same_adapter_not_an_extra_step(tiny_project):
    """`dvc repro` after a code edit reruns sft with the same params: its checkpoint dir holds the
    finished run, and resuming from it would train step max_steps + 1."""
    tiny_sft_params(tiny_project, **{"sft.max_steps": 2, "sft.save_steps": 1})
    runs = []
    for _ in range(2):
        result = run_stage("sft", tiny_project)
        assert result.returncode == 0, result.stderr
        summary = json.loads((tiny_project / "metrics" / "sft_train.json").read_text())
        runs.append((summary["steps"], (tiny_project / "models/sft/adapter_model.safetensors").read_bytes()))
    assert "end of a finished run" in result.stderr
    assert runs[0] == runs[1] and runs[1][0] == 2


@pytest.mark.slow
def test_changed_params_start_afresh_beside_the_other_runs_checkpoints(tiny_project):
    """A checkpoint is resumed only by the params and data that wrote it: another learning rate trains from
    step 0 in its own directory, and the first run's resumable checkpoint stays for its params."""
    from meddialog.training.run import last_checkpoint

    tiny_sft_params(tiny_project, **{"sft.max_steps": 2, "sft.save_steps": 1, "sft.eval_steps": 2})
    assert run_stage("sft", tiny_project).returncode == 0
    [first] = list((tiny_project / "scratch" / "checkpoints").glob("sft-*"))
    shutil.rmtree(first / "checkpoint-2")  # as if killed after step 1: checkpoint-1 is where it would resume
    assert last_checkpoint(first, "auto") == str(first / "checkpoint-1")

    tiny_sft_params(tiny_project, **{"sft.max_steps": 2, "sft.save_steps": 1, "sft.eval_steps": 2, "sft.lr": 1e-3})
    result = run_stage("sft", tiny_project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" not in result.stderr
    assert json.loads((tiny_project / "metrics" / "sft_train.json").read_text())["resumed_from_step"] == 0
    runs = sorted(p.name for p in (tiny_project / "scratch" / "checkpoints").glob("sft-*"))
    assert len(runs) == 2 and first.name in runs
    assert last_checkpoint(first, "auto") == str(first / "checkpoint-1")  # untouched
