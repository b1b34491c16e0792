"""A training process that stops making progress ends with a message instead of hanging its stage.

A rollout can block forever inside a C call (vLLM with LoRA: trl#3671; a collective whose peer died),
where no Python exception can reach it. `StepWatchdog` is a TrainerCallback with a thread of its own:
when no optimizer step finishes within `timeout_s` (counted from the start of training, then from each
step's end) it logs what it saw, dumps every thread's stack to stderr (where the hang is), and ends
the process with exit code STUCK_EXIT_CODE, which DVC reports as the stage failing.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

from transformers import TrainerCallback

log = logging.getLogger(__name__)

STUCK_EXIT_CODE = 124  # what `timeout` uses: the run was stopped for taking too long


class StepWatchdog(TrainerCallback):
    def __init__(self, timeout_s: float, setting: str, hint: str = ""):
        self.timeout_s = timeout_s
        self.setting = setting  # the param that sets timeout_s, for the message
        self.hint = hint
        self._last_progress = time.monotonic()
        self._step = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.stop()

    def start(self, step: int = 0) -> None:
        self.progress(step)
        self._done.clear()
        self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
        self._thread.start()

    def progress(self, step: int) -> None:
        self._step, self._last_progress = step, time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(timeout=min(self.timeout_s / 4, 5.0)):
            waited = time.monotonic() - self._last_progress
            if waited >= self.timeout_s:
                log.error("no optimizer step finished in %.0f s (%s = %g) after step %d: the run looks stuck%s; "
                          "stopping it (the stacks below show where it waits)", waited, self.setting, self.timeout_s,
                          self._step, f" ({self.hint})" if self.hint else "")
                for handler in logging.getLogger().handlers:
                    handler.flush()
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(STUCK_EXIT_CODE)  # the stuck thread holds the interpreter: no clean way out
