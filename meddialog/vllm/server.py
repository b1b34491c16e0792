"""An OpenAI-compatible vLLM server in a process group of its own, started and stopped from here.

vLLM lives in its own virtualenv (`make setup-vllm`, `vllm.python` in params.yaml: its transformers
range excludes the main stack's), so the pipeline never imports it: `make serve`, the vllm generation
backend and the bench all start `<vllm.python> -m vllm.entrypoints.openai.api_server` through
`VllmServer` and talk to it over HTTP on loopback.

The server is the leader of a new session, so stopping it reaches the engine core and worker
processes vLLM forks (SIGTERM to the group, SIGKILL after a grace period): nothing outlives
`with VllmServer(...)`, even when the body raises or the start times out.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from meddialog.errors import UserError
from meddialog.params import VllmParams

log = logging.getLogger("vllm")

STOP_GRACE_S = 20.0  # seconds between SIGTERM and SIGKILL of the server's process group


@dataclass(frozen=True)
class ServerSpec:
    """What one server serves, and where."""

    model_dir: Path
    served_model_name: str
    dtype: str                 # float32 | bfloat16: always named (vLLM's "auto" is bfloat16 on a CPU, whatever the weights)
    host: str = "127.0.0.1"
    port: int = 0              # 0: a free port, chosen when the server starts
    quantization: str | None = None  # "bitsandbytes": in-flight NF4 of full-precision weights (CUDA)
    trust_remote_code: bool = False  # model.trust_remote_code


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def server_command(engine: VllmParams, spec: ServerSpec, port: int) -> list[str]:
    """The server's command line. The chat template and the stop tokens come from the model directory
    (its tokenizer files and generation_config.json, `--generation-config auto`); requests that name their
    own decoding (the generation backend's) override the defaults generation_config.json sets."""
    argv = [str(engine.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(spec.model_dir),
            "--served-model-name", spec.served_model_name, "--host", spec.host, "--port", str(port),
            "--dtype", spec.dtype, "--max-model-len", str(engine.max_model_len), "--generation-config", "auto",
            "--seed", "0"]
    if engine.enforce_eager:
        argv.append("--enforce-eager")
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


def server_env(engine: VllmParams) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kv_cache_gb))  # GiB of KV cache on a CPU build
    env.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage report to vLLM's servers
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")  # a local directory: never ask the hub
    return env


class VllmServer:
    """`with VllmServer(engine, spec) as server:` → `server.base_url` answers /v1/chat/completions."""

    def __init__(self, engine: VllmParams, spec: ServerSpec, log_file: Path | None = None):
        self.engine, self.spec = engine, spec
        self.port = spec.port or free_port(spec.host)
        self.base_url = f"http://{spec.host}:{self.port}"
        self._log_file = log_file
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> VllmServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        require_interpreter(self.engine)
        if not (Path(self.spec.model_dir) / "config.json").is_file():
            raise UserError(f"{self.spec.model_dir} is not a model directory (no config.json)")
        if self._log_file is None:
            handle, name = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(handle)
            self._log_file = Path(name)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = server_command(self.engine, self.spec, self.port)
        log.info("starting vLLM on %s (%s), log: %s", self.spec.model_dir, self.base_url, self._log_file)
        with self._log_file.open("wb") as out:
            self._process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=server_env(self.engine), start_new_session=True)
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self) -> None:
        import httpx

        started = time.monotonic()
        deadline = started + self.engine.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise UserError(f"the vLLM server exited with code {self._process.returncode} while starting: "
                                f"{self.log_tail()} (full log: {self._log_file})")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    log.info("vLLM ready after %.0f s", time.monotonic() - started)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise UserError(f"the vLLM server did not answer /health within vllm.startup_timeout_s = "
                        f"{self.engine.startup_timeout_s:g} s (log: {self._log_file}): {self.log_tail()}")

    def log_tail(self, lines: int = 1) -> str:
        """The last meaningful lines of the server's log (an error's last line is its message)."""
        if not self._log_file or not self._log_file.is_file():
            return "no output"
        kept = deque((line.strip() for line in self._log_file.read_text(errors="replace").splitlines()
                      if line.strip()), maxlen=lines)
        return " | ".join(kept) or "no output"

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C raises KeyboardInterrupt here); its exit code."""
        return self._process.wait()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to whatever is left after STOP_GRACE_S."""
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid  # the session leader: its pid is the group id
        _signal_group(group, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("vLLM did not stop within %.0f s of SIGTERM: killing it", STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(group, signal.SIGKILL)
        if process.poll() is None:
            process.wait()


def require_interpreter(engine: VllmParams) -> None:
    if not Path(engine.python).is_file():
        raise UserError(f"vllm.python = {engine.python} does not exist: create vLLM's environment with "
                        f"`make setup-vllm` (`make vllm-check` says whether it works)")


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal is still a member
        return True
