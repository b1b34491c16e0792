"""Batched chat generation: the one way every stage and the evaluator produce answers.

Prompts are the conversation up to the last patient turn, rendered with the model's chat
template. Greedy decoding gives the same text as `model.generate` on one prompt at a time
(tests/test_generation.py and `python -m tools.bench generation` check it), much faster,
because of three things measured in the README's Performance section:

- Batches are built from prompts sorted by length, so little compute goes to padding.
- Every prompt starts with the same tokens (chat template + system prompt, about half of a
  typical prompt here). Their keys and values are computed once per call and copied into each
  batch's cache, instead of once per prompt.
- A row leaves the batch as soon as it ends its turn, so the rest decode at a smaller batch
  instead of carrying finished rows to `max_new_tokens`.

Layout of a batch row: [shared prefix | padding | rest of the prompt | answer...]. The padding
sits after the shared prefix and is masked out; position ids skip it, so each row computes
exactly what it would alone.
"""
from __future__ import annotations

import copy
import logging

from meddialog.params import GenerationParams

log = logging.getLogger(__name__)


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its final assistant answer."""
    last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last_answer]


def generate(model, tokenizer, prompts: list[list[dict[str, str]]], params: GenerationParams,
             progress: bool = True) -> list[str]:
    """Answer each chat prompt; returns decoded answers in the order of `prompts`."""
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    encoded = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)
               ["input_ids"] for p in prompts]
    prefix_len = shared_prefix_length(encoded)
    stop_ids = torch.tensor(stop_token_ids(tokenizer, model.generation_config))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[i:i + params.batch_size] for i in range(0, len(order), params.batch_size)]
    answers: list[str] = [""] * len(prompts)
    model.eval()
    with torch.inference_mode():
        prefix_cache = _prefill(model, encoded[0][:prefix_len])
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
            rests = [encoded[i][prefix_len:] for i in batch]
            outputs = _decode_batch(model, prefix_cache, prefix_len, rests, params, stop_ids, pad_id)
            for index, tokens in zip(batch, outputs):
                answers[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return answers


def shared_prefix_length(encoded: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (its first answer token
    comes from the logits of its last prompt token)."""
    first, shortest = encoded[0], min(len(e) for e in encoded)
    length = 0
    while length < shortest - 1 and all(e[length] == first[length] for e in encoded):
        length += 1
    return length


def _prefill(model, tokens: list[int]):
    """A one-row cache holding the keys and values of `tokens` (None when there are none)."""
    import torch
    from transformers import DynamicCache

    if not tokens:
        return None
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([tokens], device=model.device), cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _decode_batch(model, prefix_cache, prefix_len: int, rests: list[list[int]], params: GenerationParams,
                  stop_ids, pad_id: int) -> list[list[int]]:
    """New tokens for each row (stop token excluded), decoding until every row has stopped."""
    import torch
    from transformers import DynamicCache

    rows, width, device = len(rests), max(len(r) for r in rests), model.device
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rests], device=device)
    rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests], device=device)
    attention_mask = torch.cat([torch.ones(rows, prefix_len, dtype=torch.long, device=device), rest_mask], dim=1)
    # positions count real tokens only, so padding between prefix and rest shifts nothing
    position_ids = (attention_mask.cumsum(-1) - 1)[:, prefix_len:].clamp(min=0)
    if prefix_cache is None:
        cache = DynamicCache(config=model.config)
    else:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(rows)

    outputs: list[list[int]] = [[] for _ in rests]
    live = torch.arange(rows)  # which original row each batch row is
    stop_ids = stop_ids.to(device)
    for _ in range(params.max_new_tokens):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        next_tokens = _pick(logits.float(), params)
        stopped = torch.isin(next_tokens, stop_ids)
        for row, token, done in zip(live.tolist(), next_tokens.tolist(), stopped.tolist()):
            if not done:
                outputs[row].append(token)
        if stopped.all():
            break
        if stopped.any():
            keep = (~stopped).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, next_tokens = live[keep.cpu()], next_tokens[keep]
            attention_mask, position_ids = attention_mask[keep], position_ids[keep]
        input_ids = next_tokens.unsqueeze(1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(live), 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return outputs


def _pick(logits, params: GenerationParams):
    """Greedy argmax, or a sample at `temperature` from the `top_p` nucleus."""
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    if not params.do_sample:
        return logits.argmax(dim=-1)
    logits = TopPLogitsWarper(params.top_p)(None, TemperatureLogitsWarper(params.temperature)(None, logits))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS, every id of the model's
    `generation_config.eos_token_id` (an int or a list: Qwen2.5 lists `<|im_end|>` and
    `<|endoftext|>`; TRL stops on the same list), and the chat template's end-of-turn token."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *([configured] if isinstance(configured, int) else configured or [])}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)
