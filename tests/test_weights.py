"""Model directories that must be refused before anything loads (meddialog/modeling/weights.py): pickle-only
weights (never unpickled), a truncated safetensors file in models/base or an adapter, a sharded model with a
shard missing, and an adapter whose lineage.json names another base than models/base. Each is one line that
names the file and the command that rebuilds it, from the standalone evaluator and from the stages."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from meddialog.errors import UserError
from meddialog.modeling.loading import model_chain
from meddialog.modeling.weights import weight_files, weights_fingerprint
from tests.conftest import REPO, make_adapter, run_stage


class _Payload:
    """Unpickling this creates the file `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_only_model(tiny_model_dir: Path, out: Path) -> tuple[Path, Path]:
    shutil.copytree(tiny_model_dir, out)
    (out / "model.safetensors").unlink()
    marker = out.parent / "unpickled"
    (out / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return out, marker


def truncate(path: Path, keep: float = 0.6) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


def evaluate(model_path: Path, cwd: Path):
    return run_stage("tools.evaluate", cwd, "--model-path", str(model_path), "--test-data",
                     str(REPO / "data" / "sample" / "dialogues.jsonl"), "--num-samples", "2",
                     "--params", str(REPO / "params.yaml"))


def one_line_error(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stderr.strip().splitlines()[-1]


def test_pickle_only_weights_are_refused_and_never_unpickled(tiny_model_dir, tmp_path):
    model, marker = pickle_only_model(tiny_model_dir, tmp_path / "pickled")
    line = one_line_error(evaluate(model, tmp_path))
    assert "has only pickle weights (pytorch_model.bin)" in line and "safe_serialization=True" in line
    assert not marker.exists()
    pickle.loads((model / "pytorch_model.bin").read_bytes())  # the payload is live: it would have run
    assert marker.exists()


def test_a_pickle_only_adapter_is_refused(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(UserError, match=r"adapter has only pickle weights \(adapter_model.bin\)"):
        model_chain(adapter)


def test_a_truncated_base_names_the_file_and_the_rebuild(tiny_project):
    truncate(tiny_project / "models" / "base" / "model.safetensors")
    line = one_line_error(run_stage("baseline", tiny_project))
    assert line.startswith("error: models/base/model.safetensors is truncated or damaged (")
    assert line.endswith("`dvc repro base_model` rebuilds it")
    assert not (tiny_project / "metrics" / "baseline.json").exists()


def sft_adapter(project: Path, monkeypatch) -> Path:
    """models/sft on the project's models/base, with the relative paths the stages write in lineage.json."""
    back = Path.cwd()
    monkeypatch.chdir(project)
    adapter = make_adapter(Path("models/base"), Path("models/sft"), lora_b_scale=0.02)
    monkeypatch.chdir(back)
    return adapter


def test_a_truncated_adapter_and_a_cut_header(tiny_project, monkeypatch):
    adapter = sft_adapter(tiny_project, monkeypatch)
    truncate(tiny_project / adapter / "adapter_model.safetensors")
    line = one_line_error(evaluate(adapter, tiny_project))
    assert "models/sft/adapter_model.safetensors is truncated or damaged" in line
    assert "`dvc checkout models/sft` restores it from the DVC cache" in line
    truncate(tiny_project / adapter / "adapter_model.safetensors", keep=0.0001)  # inside the header
    line = one_line_error(evaluate(adapter, tiny_project))
    assert "is not a readable safetensors file" in line or "is truncated or damaged" in line


def test_a_missing_shard_is_named(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="100KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and weight_files(sharded) == shards
    shards[-1].unlink()
    with pytest.raises(UserError, match=rf"names {shards[-1].name}, which is missing"):
        weight_files(sharded)


def test_an_adapter_trained_on_another_base_is_refused_before_generating(tiny_project, monkeypatch):
    """Its lineage.json records the base's fingerprint; models/base now holds another model of the same shape."""
    import torch
    from transformers import AutoModelForCausalLM

    base = tiny_project / "models" / "base"
    adapter = sft_adapter(tiny_project, monkeypatch)
    before = weights_fingerprint(base)
    other = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for weight in other.parameters():
            weight.add_(0.01)
    other.save_pretrained(base)  # same architecture, same header: only the data differs
    assert weights_fingerprint(base) != before
    line = one_line_error(evaluate(adapter, tiny_project))
    assert "models/sft was trained on another base model than the one in models/base" in line
    assert before in line and "retrain it (`dvc repro`)" in line
    assert not (tiny_project / "scratch" / "evaluate").exists()  # nothing generated, nothing written


def test_fingerprints_tell_models_apart_and_are_stable(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert weights_fingerprint(copy) == weights_fingerprint(tiny_model_dir)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor: in the last block the fingerprint reads
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert weights_fingerprint(copy) != weights_fingerprint(tiny_model_dir)
