"""Tokenising conversations for SFT with a loss on every assistant turn and nothing else.

TRL's `assistant_only_loss` needs a chat template with `{% generation %}` markers, and most
templates (SmolLM2's and Qwen2.5's included) have none. Rather than rewriting each model's
template, we find the assistant spans from the template itself: render the dialogue up to each
assistant turn with the generation prompt, and up to the end of that turn; the characters in
between are the assistant's answer (with its end-of-turn token, so the model learns to stop).
The fast tokenizer's offsets map those characters to tokens, giving `assistant_masks`, which
TRL turns into labels (-100 elsewhere). This works for any template that renders a dialogue as
a prefix-stable string, and is checked per record.
"""
from __future__ import annotations

from meddialog.errors import UserError


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered dialogue and the (start, end) character spans of each assistant answer."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[:index + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise UserError("the model's chat template does not render dialogues as prefix-stable text, "
                            "so assistant tokens cannot be located for the SFT loss")
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` (1 = train on this token), truncated to `max_length`."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= token_start < end for start, end in spans))
            for token_start, _ in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"][:max_length], "assistant_masks": mask[:max_length]}
