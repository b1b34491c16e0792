"""Batched chat generation: the one way every stage and the evaluator produce answers.

Prompts are the conversation up to the last patient turn, rendered with the model's chat
template. Batches are left-padded (so every row's next token sits at the same position) and
built from prompts sorted by length, which keeps padding, and so wasted compute, small; the
answers come back in the caller's order. Greedy decoding gives the same text as generating
one prompt at a time (tests/test_generation.py checks it), much faster.
"""
from __future__ import annotations

import logging

from stages.params import GenerationParams

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

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p} \
        if params.do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    answers: list[str] = [""] * len(prompts)
    model.eval()
    batches = [order[i:i + params.batch_size] for i in range(0, len(order), params.batch_size)]
    for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
        attention_mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                max_new_tokens=params.max_new_tokens, pad_token_id=pad_id,
                eos_token_id=_stop_ids(tokenizer), **sampling,
            )
        for row, index in enumerate(batch):
            answers[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    return answers


def _stop_ids(tokenizer) -> list[int]:
    """EOS plus the chat template's end-of-turn token, when the template has one."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)
