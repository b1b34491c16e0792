"""Chat completions from a vLLM server: the vllm generation backend's side of the HTTP boundary.

Every request names its whole decoding (greedy: temperature 0; or temperature and top-p sampling
with a per-request seed), its stop token ids and its length, the way `generate_kwargs` pins
`model.generate`'s: params.yaml alone decides how answers are decoded, whatever defaults the served
model's generation_config.json gives the server. `generation.batch_size` requests are in flight at
once; vLLM batches them itself (continuous batching), so that is also how many it decodes together.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from meddialog.errors import UserError
from meddialog.params import GenerationParams

log = logging.getLogger("vllm")


def request_body(model_name: str, messages: list[dict[str, str]], params: GenerationParams, stop_ids: list[int],
                 seed: int, stream: bool = False) -> dict:
    """One /v1/chat/completions request: OpenAI fields plus vLLM's sampling extensions (top_k, min_p,
    repetition_penalty, stop_token_ids), each set so nothing is left to the server's defaults."""
    sampling = {"temperature": params.temperature, "top_p": params.top_p, "seed": seed} if params.do_sample else \
        {"temperature": 0.0, "top_p": 1.0}
    return {"model": model_name, "messages": messages, "max_tokens": params.max_new_tokens, **sampling,
            "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "stop_token_ids": stop_ids,
            "skip_special_tokens": True, "n": 1, "stream": stream}


def chat_answers(base_url: str, model_name: str, prompts: list[list[dict[str, str]]], params: GenerationParams,
                 stop_ids: list[int], seed: int, timeout_s: float) -> list[str]:
    """The answer to each chat prompt, in the order of `prompts` (sampled prompt i uses seed + i)."""
    import httpx

    limits = httpx.Limits(max_connections=params.batch_size, max_keepalive_connections=params.batch_size)
    with httpx.Client(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        def answer(index: int) -> str:
            body = request_body(model_name, prompts[index], params, stop_ids, seed + index)
            try:
                response = client.post("/v1/chat/completions", json=body)
            except httpx.TimeoutException:
                raise UserError(f"vLLM gave no answer within vllm.request_timeout_s = {timeout_s:g} s "
                                f"(prompt {index}); the server may be stuck or overloaded") from None
            if response.status_code != 200:
                raise UserError(f"vLLM refused prompt {index} with HTTP {response.status_code}: "
                                f"{_error_message(response)}")
            return response.json()["choices"][0]["message"]["content"].strip()

        with ThreadPoolExecutor(max_workers=params.batch_size) as pool:
            return list(pool.map(answer, range(len(prompts))))


def _error_message(response) -> str:
    try:
        error = response.json().get("error", {})
        return error.get("message", response.text) if isinstance(error, dict) else str(error)
    except ValueError:
        return response.text[:200]
