"""MLflow tracking shared by every stage.

Store: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlflow.db`, where <repo> is
`DVC_ROOT` when DVC runs the stage: queued and `--temp` experiments run in a temporary copy of
the repository, and resolving against DVC_ROOT keeps their runs in the main repository's store.
Every run is tagged with the stage, the DVC experiment name (`DVC_EXP_NAME`) and the git commit.
If the tracking server cannot be reached, the stage still finishes: it says so once and its
results are in metrics/ regardless: connecting gives up within seconds for a closed port (under a
minute for a host that never answers) instead of after MLflow's 4 minutes of retries. A server
lost mid-run holds the stage once, for under a minute of retries (measured: 30 s), then tracking stops for
the rest of the stage (tests/test_mlflow_server.py).
Credentials stay in the environment (MLflow reads them itself); nothing here logs the
environment or the tracking URI's userinfo.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def _use_experiment(mlflow: Any, name: str) -> None:
    """With the embedded store, keep artifacts in <repo>/mlruns too (not in a temporary copy's cwd)."""
    if mlflow.get_experiment_by_name(name) is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.create_experiment(name, artifact_location=(repo_root() / "mlruns").as_uri())
    mlflow.set_experiment(name)


def run_tags(stage: str) -> dict[str, str]:
    tags = {"stage": stage, "git_commit": _git_commit()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


class Run:
    """A started MLflow run, or a stand-in that ignores calls once tracking has failed."""

    def __init__(self, mlflow: Any | None):
        self._mlflow = mlflow

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._mlflow is None:
            return
        try:
            getattr(self._mlflow, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never fail a training run
            log.warning("MLflow tracking skipped from here on (%s: %s); results are still written to metrics/",
                        type(err).__name__, _first_line(err))
            self._mlflow = None

    @property
    def failed(self) -> bool:
        return self._mlflow is None

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", {k: _short(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("log_metrics", metrics, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", {k: _short(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", str(path), artifact_path=artifact_path)

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifacts", str(path), artifact_path=artifact_path)


# MLflow's HTTP defaults (7 retries with exponential backoff, a 120 s timeout) ride out a
# rate-limiting server, but hold a stage for about 4 minutes when the server is not there at all
# (measured: 252 s for a server killed mid-run, a training run stalled in its logging callback).
# QUICK_FAILURE_LIMITS apply where failing is the likely outcome: while connecting, and when ending a
# run after a call has already failed. RUN_LIMITS apply in between: 4 retries (2 + 4 + 8 + 16 s of
# backoff) still ride out a blip of half a minute. A variable the user has set always wins.
QUICK_FAILURE_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RUN_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextlib.contextmanager
def _quick_failure() -> Iterator[None]:
    with _limits(QUICK_FAILURE_LIMITS):
        yield


@contextlib.contextmanager
def _limits(limits: dict[str, str]) -> Iterator[None]:
    added = {name: value for name, value in limits.items() if name not in os.environ}
    os.environ.update(added)  # this process only: MLflow reads them at each request
    # urllib3 logs a warning for every retry; the one line that matters is "tracking skipped"
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def start_run(stage: str, experiment: str, run_name: str | None = None) -> Iterator[Run]:
    """Context manager yielding a `Run`; the run is ended (FINISHED or FAILED) on exit."""
    # torchrun and accelerate give every process its global RANK: one training is one MLflow run,
    # logged by rank 0; the other processes get the silent stand-in.
    if os.environ.get("RANK", "0") != "0":
        yield Run(None)
        return
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        with _quick_failure():
            _use_experiment(mlflow, experiment)
            mlflow.start_run(run_name=run_name or stage, tags=run_tags(stage))
    except Exception as err:  # noqa: BLE001 - an unreachable server must not stop the stage
        log.warning("MLflow tracking skipped (%s: %s); results are still written to metrics/",
                    type(err).__name__, _first_line(err))
        yield Run(None)
        return
    run = Run(mlflow)
    status = "FAILED"
    try:
        with _limits(RUN_LIMITS):
            yield run
        status = "FINISHED"
    finally:
        with _quick_failure() if run.failed else contextlib.nullcontext(), contextlib.suppress(Exception):
            mlflow.end_run(status=status)


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    """Dataclass/dict params → flat `section.key` entries for MLflow."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return flat
    return {prefix: obj}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.environ.get("DVC_ROOT") or None).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0][:200]
