"""Writes a full disk or a failure cannot leave half done (meddialog/atomic.py), and a full disk as one line.

ENOSPC comes from the OS, not from a mock: /dev/full (every write to it fails with ENOSPC) behind a file's
partial path, and a small tmpfs mounted under a scratch project for the SFT stage (needs root, as CI has)."""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from meddialog import atomic
from tests.conftest import make_adapter, run_stage, write_params


def test_a_file_is_replaced_whole(tmp_path):
    target = tmp_path / "metrics" / "m.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_json(target, {"a": 2, "b": 3}, sort_keys=True)
    assert json.loads(target.read_text()) == {"a": 2, "b": 3}
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.json"]  # no partial left behind


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "m.json"
    atomic.write_json(target, {"old": 1})
    partial = tmp_path / ".m.json.partial"
    partial.symlink_to("/dev/full")  # the write goes to /dev/full: ENOSPC from the kernel
    with pytest.raises(OSError) as err:
        atomic.write_json(target, {"new": 2})
    assert err.value.errno == errno.ENOSPC and atomic.no_space_left(err.value)
    assert json.loads(target.read_text()) == {"old": 1}
    assert not partial.exists() and not partial.is_symlink()


def test_a_directory_replaces_the_old_one_only_when_complete(tmp_path):
    out = tmp_path / "adapter"
    with atomic.directory(out) as partial:
        (partial / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic.directory(out) as partial:
        (partial / "weights").write_text("v2, half")
        raise RuntimeError("killed midway")
    assert (out / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_library_errors_that_wrap_enospc_are_recognised():
    class SafetensorError(Exception):
        pass
    assert atomic.no_space_left(SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                                                "StorageFull, message: \"No space left on device\" }) (os error 28)"))
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert atomic.no_space_left(wrapped)
    assert not atomic.no_space_left(OSError(errno.EACCES, "Permission denied"))


@pytest.fixture
def small_disk(tmp_path):
    """mount(path, size): a tmpfs of `size` bytes at `path` (mount again to resize it); unmounted afterwards."""
    mounted = []

    def mount(path: Path, size: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"remount,size={size}" if path in mounted else f"size={size}"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(path)
        return path
    yield mount
    for path in dict.fromkeys(reversed(mounted)):
        # lazy: this process may still map a file there (safetensors mmaps the weights it loads)
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.mark.slow
def test_a_full_disk_during_the_adapter_save_is_one_line_and_keeps_the_previous_adapter(tiny_project, small_disk):
    """models/ on a tmpfs with room for the base and a previous adapter, not for the new adapter's tokenizer.
    The stage stops with one line; the previous adapter is untouched; no partial directory is left; with
    the space back, the rerun finds the failed run's checkpoints complete and saves its adapter."""
    write_params(tiny_project, **{"sft.max_steps": 2, "sft.batch_size": 2, "sft.eval_samples": 2, "sft.eval_steps": 2,
                                  "sft.save_steps": 2, "sft.max_length": 128, "sft.max_samples": 8, "lora.r": 2,
                                  "lora.alpha": 4})
    models = tiny_project / "models"
    keep = shutil.move(models, tiny_project / "models-on-disk")
    base_bytes = sum(p.stat().st_size for p in Path(keep, "base").iterdir())
    small_disk(models, base_bytes + 2 * 2**20)  # + 2 MiB: the adapter fits, its 3.4 MB tokenizer.json does not
    shutil.copytree(Path(keep) / "base", models / "base")
    previous = make_adapter(models / "base", models / "sft", lora_b_scale=0.02)
    before = (previous / "adapter_model.safetensors").read_bytes()

    full = run_stage("sft", tiny_project)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no space left on device") and "free some space and rerun" in line, line
    assert (models / "sft" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in models.iterdir()) == ["base", "sft"]  # no models/sft.partial
    assert not (tiny_project / "metrics" / "sft_train.json").exists()

    small_disk(models, base_bytes + 16 * 2**20)  # space back
    again = run_stage("sft", tiny_project)
    assert again.returncode == 0, again.stderr[-3000:]
    # the failed run's last checkpoint (scratch/, another disk) is complete: the end of a finished run,
    # which run.last_checkpoint trains again from the start (one step past max_steps otherwise)
    assert "is the end of a finished run with these params" in again.stderr, again.stderr[-3000:]
    assert (models / "sft" / "adapter_model.safetensors").read_bytes() != before
    assert sorted(p.name for p in models.iterdir()) == ["base", "sft"]
