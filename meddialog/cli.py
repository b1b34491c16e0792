"""Runs a stage's `main()` the same way for every stage: logging set up, user errors as one line.

A user mistake (bad params, missing input, no network for a hub download) ends with a single
line on stderr and a non-zero exit code (2 for params, 1 otherwise), and so does a full disk; a bug
still shows its traceback, because that is what a developer needs to fix it.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

from meddialog.atomic import no_space_left
from meddialog.errors import UserError


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # bitsandbytes announces at import that an optional faster CPU 4-bit kernel package (`kernels`) is
    # missing; its own CPU NF4 code runs without it, so that warning is noise in every stage's log.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # httpx logs every request at INFO: one line per prompt when the vllm backend decodes
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(main: Callable[[], None]) -> None:
    """Entry point for `python -m stages.<name>`."""
    setup_logging()
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if not no_space_left(err):
            raise
        # outputs are written whole or not at all (meddialog/atomic.py): nothing half-written is left
        print(f"error: no space left on device{_where(err)}; free some space and rerun (complete outputs and "
              "checkpoints are kept, partial ones removed)", file=sys.stderr)
        sys.exit(1)


def _where(err: BaseException) -> str:
    while err is not None:
        if isinstance(err, OSError) and err.filename:
            return f" writing {err.filename}"
        err = err.__cause__ or err.__context__
    return ""
