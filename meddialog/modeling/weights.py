"""Weight files before anything loads them: safetensors only, complete, and a fingerprint of whose weights they are.

transformers and PEFT report a missing or damaged file with their own exception from deep inside
`from_pretrained` (`OSError: Error no file named model.safetensors`, `SafetensorError: ... incomplete
metadata`); these checks say instead which file is wrong and the command that rebuilds it, before any
model, tokenizer or data is read. Pickle weights (`pytorch_model.bin`, `adapter_model.bin`) are never
loaded: unpickling can run code.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from meddialog.errors import UserError
from meddialog.paths import BASE_DIR, EXPORT_DIR, GRPO_DIR, SFT_DIR

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
FINGERPRINT_BLOCKS = 16         # blocks of FINGERPRINT_BLOCK_BYTES read from each file
FINGERPRINT_BLOCK_BYTES = 1 << 16

# The command that makes each pipeline directory again (models/base is not DVC-cached: it is rebuilt).
_REBUILD = {BASE_DIR: "`dvc repro base_model` rebuilds it",
            SFT_DIR: "`dvc checkout models/sft` restores it from the DVC cache (`dvc repro sft` retrains it)",
            GRPO_DIR: "`dvc checkout models/grpo` restores it from the DVC cache (`dvc repro grpo` retrains it)",
            EXPORT_DIR: "`dvc checkout models/export` restores it (`dvc repro export` rebuilds it)"}


def rebuild_hint(directory: Path) -> str:
    directory = Path(directory)
    for known, hint in _REBUILD.items():
        if directory == known or (directory.is_absolute() and directory == known.resolve()):
            return hint
    return "save or download it again"


def weight_files(directory: Path, adapter: bool = False) -> list[Path]:
    """The directory's safetensors files, each checked complete; a clear UserError otherwise."""
    directory = Path(directory)
    found = [directory / ADAPTER_WEIGHTS] if adapter else sorted(directory.glob("*.safetensors"))
    found = [path for path in found if path.is_file()]
    if not found:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES) if directory.is_dir() else []
        if pickles:
            raise UserError(f"{directory} has only pickle weights ({', '.join(pickles)}), which are never loaded "
                            "(unpickling can run code): convert them to safetensors (load them yourself once, "
                            f"then save_pretrained(..., safe_serialization=True)), or {rebuild_hint(directory)}")
        wanted = ADAPTER_WEIGHTS if adapter else "*.safetensors"
        raise UserError(f"{directory} has no weights ({wanted}): {rebuild_hint(directory)}")
    index = directory / SHARD_INDEX
    if not adapter and index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(name for name in shards if not (directory / name).is_file())
        if missing:
            raise UserError(f"{directory}: {SHARD_INDEX} names {', '.join(missing)}, which is missing: "
                            f"{rebuild_hint(directory)}")
    for path in found:
        _check_complete(path, rebuild_hint(directory))
    return found


def _header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: 8 bytes little-endian length, then that much JSON."""
    with path.open("rb") as f:
        length_bytes = f.read(8)
        if len(length_bytes) < 8:
            raise ValueError("shorter than a safetensors header")
        length = int.from_bytes(length_bytes, "little")
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"header length {length} is not plausible")
        raw = f.read(length)
        if len(raw) < length:
            raise ValueError("the header is cut short")
    return length, json.loads(raw)


def _check_complete(path: Path, hint: str) -> None:
    size = path.stat().st_size
    try:
        length, header = _header(path)
        data_end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                       default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:  # JSONDecodeError is a ValueError
        raise UserError(f"{path} is not a readable safetensors file ({err}): {hint}") from None
    expected = 8 + length + data_end
    if size != expected:
        raise UserError(f"{path} is truncated or damaged ({size} bytes; its header describes {expected}): {hint}")


def weights_fingerprint(directory: Path, adapter: bool = False) -> str:
    """A short hash that tells one model's weights from another's, without reading them all.

    It covers every safetensors file's name, size and header (tensor names, shapes, dtypes) and
    FINGERPRINT_BLOCKS evenly spaced blocks of its data, from its first byte to its last. Two checkpoints of one architecture (a base model
    and its instruct version) share every header but no data block. A full sha256 would cost ~1 s per GB on
    every load, and a stage loads the base several times (30 s a load for a 15 GB model).
    """
    digest = hashlib.sha256()
    for path in weight_files(directory, adapter):
        size = path.stat().st_size
        length, _ = _header(path)
        with path.open("rb") as f:
            digest.update(f"{path.name}:{size}:".encode())
            digest.update(f.read(8 + length))
            data_start, data_size = 8 + length, size - 8 - length
            span = max(data_size - FINGERPRINT_BLOCK_BYTES, 0)
            for block in range(FINGERPRINT_BLOCKS):  # the first block starts the data, the last one ends it
                f.seek(data_start + span * block // (FINGERPRINT_BLOCKS - 1))
                digest.update(f.read(FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()[:16]
