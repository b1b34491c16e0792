"""Serve the exported model with vLLM's OpenAI-compatible server: `make serve`.

    python -m meddialog.serve                                  # models/export on 127.0.0.1:8000, as "meddialog"
    python -m meddialog.serve --model-path models/base --port 8001

The server runs in vLLM's own environment (`vllm.python`, `make setup-vllm`) and is bound to
`vllm.host` (loopback by default: nothing off this machine reaches it). The model directory gives the
chat template and, through its generation_config.json, the stop tokens and default decoding; the
name clients ask for is `vllm.served_model_name`. Set VLLM_API_KEY in the environment to require
`Authorization: Bearer <key>` (it is never read from params.yaml). Ctrl-C stops the server and every
process it started. Requests: README "Use the model" and docs/serving.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError
from meddialog.params import load_params
from meddialog.paths import EXPORT_DIR, SCRATCH_DIR

log = logging.getLogger("serve")

LOG_FILE = SCRATCH_DIR / "vllm" / "serve.log"


def model_dtype(model_dir: Path) -> str:
    """The dtype the directory's weights were saved in (an export's `export.dtype`): vLLM's own "auto"
    would compute in bfloat16 on a CPU, and a float32 export then no longer answers as it was evaluated."""
    config = json.loads((model_dir / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16") else "float32"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meddialog.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", type=Path, default=EXPORT_DIR, help=f"model directory (default {EXPORT_DIR})")
    parser.add_argument("--host", help="bind address (default: vllm.host)")
    parser.add_argument("--port", type=int, help="port (default: vllm.port)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from meddialog.vllm.server import ServerSpec, VllmServer

    args = parse_args(argv)
    engine = load_params(args.params).vllm
    if not (args.model_path / "config.json").is_file():
        hint = " (run `dvc repro export` or `dvc pull`)" if args.model_path == EXPORT_DIR else ""
        raise UserError(f"{args.model_path} is not a model directory (no config.json){hint}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535 (got {args.port})")
    host, port = args.host or engine.host, args.port or engine.port
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get("VLLM_API_KEY"):
        log.warning("binding %s without VLLM_API_KEY: anyone who can reach this port can use the model", host)
    spec = ServerSpec(args.model_path, engine.served_model_name, model_dtype(args.model_path), host=host, port=port)
    server = VllmServer(engine, spec, log_file=LOG_FILE)
    # `kill`, systemd and docker stop with SIGTERM, whose default would end this process alone and leave
    # vLLM's process group running: make it an exit, so the `finally` below stops the server
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    server.start()
    try:
        print(f"serving {args.model_path} as '{spec.served_model_name}' at {server.base_url}/v1 "
              f"(log: {LOG_FILE}; Ctrl-C stops)\n"
              f"  curl {server.base_url}/v1/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{spec.served_model_name}\", \"messages\": "
              f"[{{\"role\": \"user\", \"content\": \"What helps a mild fever?\"}}]}}'", flush=True)
        code = server.wait()
        raise UserError(f"the vLLM server exited with code {code}: {server.log_tail()} (log: {LOG_FILE})")
    finally:
        server.stop()


if __name__ == "__main__":
    cli.run(main)
