"""The kill suite's probe, loaded by every Python process the suite starts (dvc, the stage, torchrun's
workers) because tools/kill_hook is first on their PYTHONPATH. Nothing else ever puts it there.

It watches the writes a process makes inside the project through Python's audit events: a file opened for
writing, a directory made, a rename (atomic writes end with one). With KILL_SUITE_LOG set it appends each
as `<pid> <kind> <path relative to the project>`; with KILL_SUITE_AT = `<kind> <path> <n>` it SIGKILLs the whole
process group (dvc and the stage together, like the OOM killer or a lost machine) at the n-th such event
of one process, before the write happens. The suite reads the log of an uninterrupted run to draw its kill
points, so a point is always a write that run really made.
"""
import os
import signal
import sys

_ROOT = os.environ.get("KILL_SUITE_ROOT")
_LOG = os.environ.get("KILL_SUITE_LOG")
_AT = os.environ.get("KILL_SUITE_AT")
# files no stage output depends on, or named at random per run (a point must recur in the next run)
_IGNORED = (".git/", ".dvc/", "mlruns/", "mlflow.db", "__pycache__/")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
_seen: dict[tuple[str, str], int] = {}
_busy = False


def _relative(path) -> str | None:
    if isinstance(path, int):
        return None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    full = os.path.realpath(os.fspath(path))
    if not full.startswith(_ROOT + os.sep):
        return None
    relative = full[len(_ROOT) + 1:]
    return None if relative.startswith(_IGNORED) or "/__pycache__/" in relative else relative


def _event(kind: str, path) -> None:
    relative = _relative(path)
    if relative is None:
        return
    key = (kind, relative)
    _seen[key] = _seen.get(key, 0) + 1
    line = f"{kind} {relative}"
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {line}\n")
    if _AT and _AT == f"{line} {_seen[key]}":
        with open(_AT_FILE, "w") as reached:
            reached.write(f"{line} {_seen[key]} pid {os.getpid()}\n")
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _hook(name: str, args: tuple) -> None:
    global _busy
    if _busy:
        return
    _busy = True
    try:
        if name == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
            if writes:
                _event("write", path)
        elif name == "os.mkdir":
            _event("mkdir", args[0])
        elif name == "os.rename":
            _event("rename", args[1])
    finally:
        _busy = False


if _ROOT and (_LOG or _AT):
    _ROOT = os.path.realpath(_ROOT)
    _AT_FILE = os.environ.get("KILL_SUITE_REACHED", os.devnull)
    sys.addaudithook(_hook)
