"""Batched chat generation: the one way every stage and the evaluator produce answers.

Prompts are the conversation up to the last patient turn, rendered with the model's chat
template, sorted by length (so a batch holds prompts of similar length and little compute goes
to padding) and answered `batch_size` at a time by `model.generate`, left-padded. Greedy text is
identical to `model.generate` on one prompt at a time (tests/test_generation.py, and
`python -m tools.bench generation`, which also measures the two against each other).

A hand-written decode loop (the prompts' shared prefix computed once, finished rows leaving the
batch) used to stand here. Measured against this on the same batches (the generation bench, which
ran both until the loop went) it was no faster on the pipeline's recipe: the figures and the method
are in docs/performance.md; read them before writing another.
"""
from __future__ import annotations

from meddialog.params import GenerationParams


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its final assistant answer."""
    last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last_answer]


def generate(model, tokenizer, prompts: list[list[dict[str, str]]], params: GenerationParams,
             progress: bool = True) -> list[str]:
    """Answer each chat prompt; returns decoded answers in the order of `prompts`."""
    import torch
    from tqdm.auto import tqdm

    encoded = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)
               ["input_ids"] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batches = [order[i:i + params.batch_size] for i in range(0, len(order), params.batch_size)]
    settings = generate_kwargs(tokenizer, model.generation_config, params)
    stops = set(settings["eos_token_id"])
    answers: list[str] = [""] * len(prompts)
    model.eval()
    for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress):
        inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding_side="left",
                               return_tensors="pt").to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, **settings)
        for index, answer in zip(batch, output[:, inputs["input_ids"].shape[1]:].tolist()):
            answers[index] = tokenizer.decode(until_stop(answer, stops), skip_special_tokens=True).strip()
    return answers


def until_stop(token_ids: list[int], stops: set[int]) -> list[int]:
    """The answer's tokens before its first stop id. `generate` keeps the stop token and pads a row that
    stopped early up to the batch's longest; a stop id need not be a special token that decoding would
    skip (a generation_config may list any id), so the answer is cut here."""
    end = next((i for i, token in enumerate(token_ids) if token in stops), len(token_ids))
    return token_ids[:end]


def generate_kwargs(tokenizer, generation_config, params: GenerationParams) -> dict:
    """`model.generate` arguments for `params`: greedy, or temperature and top-p sampling, stopping
    at any of `stop_token_ids`. `generate` takes every setting it is not given from the checkpoint's
    generation_config.json (Qwen2.5's sets top_k 20 and repetition_penalty 1.05, which apply even
    to greedy decoding), so the ones chat checkpoints set are pinned here: params.yaml alone decides
    how answers are decoded, whatever the model."""
    sampling = {"temperature": params.temperature, "top_p": params.top_p} if params.do_sample else \
        {"temperature": None, "top_p": None}
    return {"max_new_tokens": params.max_new_tokens, "do_sample": params.do_sample, **sampling, "top_k": None,
            "min_p": None, "repetition_penalty": None, "eos_token_id": stop_token_ids(tokenizer, generation_config),
            "pad_token_id": tokenizer.pad_token_id}


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
