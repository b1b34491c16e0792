"""Writes that a kill or a full disk cannot leave half done.

A file is written beside its target (`.<name>.partial`), flushed to disk and renamed over the target;
a directory (an adapter, an export) is filled under `<name>.partial` and renamed into place when complete.
A rename within one directory is atomic on POSIX filesystems, so a later stage, `dvc metrics diff` or a
resumed run sees the old file, the new one or none, never a prefix. A write that fails (ENOSPC, EIO)
removes its partial file and leaves the previous target as it was.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

PARTIAL_SUFFIX = ".partial"


def write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    try:
        with partial.open("w", encoding=encoding, newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, **dumps) -> None:
    """JSON with a trailing newline (indent 2 unless `dumps` says otherwise)."""
    write_text(path, json.dumps(value, **{"indent": 2, **dumps}) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextmanager
def directory(out_dir: Path, *, writer: bool = True) -> Iterator[Path]:
    """Yield `<out_dir>.partial` to fill; on success it replaces `out_dir`, on failure it is removed and
    `out_dir` is left as it was. `writer=False` (the other ranks of a distributed save): the same path,
    nothing created, moved or removed."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)
    if not writer:
        yield partial
        return
    shutil.rmtree(partial, ignore_errors=True)  # left by a kill
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out_dir.exists():  # a kill between these two lines leaves no output and a complete partial: never half
        shutil.rmtree(out_dir)
    partial.rename(out_dir)


def no_space_left(err: BaseException) -> bool:
    """Whether `err` is a full disk: an OSError with ENOSPC, or a library's own error wrapping one
    (safetensors' Rust writer raises SafetensorError "... No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return f"(os error {errno.ENOSPC})" in str(err) or any(
        no_space_left(inner) for inner in (err.__cause__, err.__context__) if inner is not None)
