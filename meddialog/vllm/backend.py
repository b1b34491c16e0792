"""`generation.backend: vllm`: a model chain's answers from a vLLM server started for it.

vLLM loads a model directory, so an adapter chain is first merged in full precision (the cached
merge of meddialog/modeling/merge.py, in the chain's compute dtype: the weights transformers
evaluates when it merges in memory). A chain evaluated in 4-bit is served with vLLM's in-flight
bitsandbytes NF4 quantization of that merge on CUDA; vLLM's CPU build has no bitsandbytes, so there
it is refused. The prompts go to the server `generation.batch_size` at a time (meddialog/vllm/client.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from meddialog.errors import UserError
from meddialog.params import Params
from meddialog.paths import SCRATCH_DIR

log = logging.getLogger("vllm")

LOG_DIR = SCRATCH_DIR / "vllm"  # one server log per evaluated model


@dataclass(frozen=True)
class Served:
    model_dir: Path               # what vLLM loads
    dtype: str                    # the chain's compute dtype
    quantization: str | None      # vLLM's --quantization, or None


def served_model(base: Path, adapters: tuple[Path, ...], precision, params: Params) -> Served:
    """The directory vLLM serves for the chain `base` + `adapters`, evaluated in `precision`."""
    from meddialog.modeling.merge import merged_dir

    if precision.load_in_4bit and precision.device == "cpu":
        raise UserError("generation.backend vllm cannot evaluate in 4-bit on the CPU (vLLM's CPU build has no "
                        "bitsandbytes): set model.load_in_4bit to false, or generation.backend to transformers")
    directory = merged_dir(base, adapters, precision.dtype, params.model.trust_remote_code) if adapters else base
    return Served(Path(directory), precision.dtype, "bitsandbytes" if precision.load_in_4bit else None)


def usable_vllm(params: Params) -> dict[str, str]:
    """The versions in vLLM's environment (`vllm.python`), or a UserError saying why it is not usable."""
    from meddialog.vllm.environment import check

    status = check(Path(params.vllm.python))
    if not status.usable:
        raise UserError(f"generation.backend is vllm, but {status.describe()}")
    return status.versions


def vllm_answers(served: Served, tokenizer, generation_config, prompts: list[list[dict[str, str]]],
                 params: Params, name: str) -> list[str]:
    """The answer to each prompt, from a vLLM server started on `served` for them and stopped after."""
    from meddialog.modeling.generation import stop_token_ids
    from meddialog.vllm.client import chat_answers
    from meddialog.vllm.server import ServerSpec, VllmServer

    spec = ServerSpec(served.model_dir, params.vllm.served_model_name, served.dtype, quantization=served.quantization,
                      trust_remote_code=params.model.trust_remote_code)
    with VllmServer(params.vllm, spec, log_file=LOG_DIR / f"{name}.log") as server:
        return chat_answers(server.base_url, spec.served_model_name, prompts, params.generation,
                            stop_token_ids(tokenizer, generation_config), params.seed, params.vllm.request_timeout_s)
