import dataclasses
import re

import pytest

from meddialog.params import ParamsError, load_params
from tests.conftest import REPO, run_stage, write_params


def test_default_params_load_and_are_typed():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params.sft.lr, float) and params.sft.lr > 0
    assert isinstance(params.sft.batch_size, int)
    assert params.data.split.train + params.data.split.val + params.data.split.test == pytest.approx(1.0)
    assert params.model.load_in_4bit == "auto"


def test_keys_users_type_exist():
    params = load_params(REPO / "params.yaml")
    for dotted in ["sft.lr", "sft.epochs", "sft.batch_size", "grpo.lr", "grpo.epochs", "grpo.batch_size",
                   "grpo.num_generations", "grpo.max_completion_length", "model.name",
                   "baseline.num_samples", "eval.num_samples"]:
        section, key = dotted.split(".")
        assert key in {f.name for f in dataclasses.fields(getattr(params, section))}, dotted


def test_dvc_written_exponent_float_is_a_float(tmp_path):
    # `dvc exp run -S sft.lr=1e-5` writes `lr: 1e-05`; YAML 1.1 (PyYAML) would read a string.
    write_params(tmp_path)
    text = (tmp_path / "params.yaml").read_text()
    text = re.sub(r"^(sft:\n(?:  .*\n)*?  lr: )\S+", r"\g<1>1e-05", text, count=1, flags=re.M)
    assert "lr: 1e-05" in text
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.sft.lr == pytest.approx(1e-5) and isinstance(params.sft.lr, float)


def test_integer_accepted_where_a_float_is_expected(tmp_path):
    write_params(tmp_path, **{"sft.lr": 1})
    assert load_params(tmp_path / "params.yaml").sft.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ({"sft.lrr": 0.1}, "sft.lrr: unknown key; did you mean 'sft.lr'?"),
    ({"sft.lr": "fast"}, "sft.lr: must be a number, got str 'fast'"),
    ({"sft.lr": 0}, "sft.lr: must be > 0"),
    ({"sft.batch_size": 2.5}, "sft.batch_size: must be an integer"),
    ({"sft.batch_size": True}, "sft.batch_size: must be an integer"),
    ({"data.split.train": 1.5}, "data.split.train: must be between 0 and 1"),
    ({"data.split.train": 0.7}, "data.split: train + val + test must sum to 1"),
    ({"grpo.num_generations": 1}, "grpo.num_generations: must be >= 2"),
    ({"grpo.batch_size": 3}, "grpo.batch_size: must be a multiple of grpo.num_generations"),
    ({"model.load_in_4bit": "yes"}, "model.load_in_4bit: must be one of 'auto', True, False"),
    ({"sft.sources": ["nope"]}, "sft.sources: names no source in data.sources"),
    ({"eval.num_samples": -1}, "eval.num_samples: must be >= 1"),
    ({"train.launcher": "torch"},
     "train.launcher: must be one of 'python', 'torchrun', 'accelerate', got 'torch'; did you mean 'torchrun'?"),
    ({"train.nprocs_per_node": 2}, "train.nprocs_per_node: unknown key; did you mean 'train.nproc_per_node'?"),
    ({"train.nproc_per_node": "four"}, "train.nproc_per_node: must be an integer or 'auto', got str 'four'"),
    ({"train.nproc_per_node": 0}, "train.nproc_per_node: must be >= 1 or 'auto'"),
    ({"train.nproc_per_node": 2}, "train.nproc_per_node: more than one process needs train.launcher torchrun"),
    ({"verl.attn_implementation": "flash"},
     "verl.attn_implementation: must be one of 'sdpa', 'flash_attention_2', 'eager', got 'flash'"),
])
def test_bad_values_name_the_key(tmp_path, override, message):
    write_params(tmp_path, **override)
    with pytest.raises(ParamsError) as err:
        load_params(tmp_path / "params.yaml")
    assert message in str(err.value)


def test_train_section_takes_a_process_count_or_auto(tmp_path):
    assert load_params(REPO / "params.yaml").train.nproc_per_node == "auto"
    write_params(tmp_path, **{"train.launcher": "torchrun", "train.nproc_per_node": 2})
    assert load_params(tmp_path / "params.yaml").train.nproc_per_node == 2


def test_params_without_a_train_section_run_as_one_process(tmp_path):
    write_params(tmp_path)
    text = re.sub(r"^train:.*\n(?:[ #].*\n)*", "", (tmp_path / "params.yaml").read_text(), flags=re.M)
    assert "nproc_per_node" not in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.launcher == "python"


def test_missing_section_is_reported(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ParamsError, match="data: missing required key"):
        load_params(tmp_path / "params.yaml")


def test_stage_exits_2_with_one_line_on_bad_param(tmp_path):
    write_params(tmp_path, **{"data.split.train": 1.5})
    result = run_stage("process", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "data.split.train" in result.stderr and "Traceback" not in result.stderr
