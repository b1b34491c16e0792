"""Raw dataset records → chat messages.

Accepted raw formats (the first that matches wins):
  * ``instruction`` / ``input`` / ``output``   (medical_meadow flashcards, ChatDoctor HealthCareMagic)
  * ``question`` / ``answer``
  * ``conversations``: ShareGPT turns ``{"from": "human"|"gpt"|..., "value": ...}``
  * ``messages``: OpenAI turns ``{"role": "user"|"assistant"|..., "content": ...}``
  * ``text``: one string with speaker markers (``Patient:``/``Doctor:``, ``<human>:``/``<bot>:``,
    ``User:``/``Assistant:``)

Every dialogue comes out as user/assistant turns that alternate, start with the user and end
with the assistant; the configured system prompt is put first by the caller. A record that
cannot become such a dialogue raises `Dropped` with a reason that the process stage counts.

Text must be a string. A number, list, object or boolean where a question, an answer, a turn's content
or a speaker belongs (scraped dumps have them) drops the record as ``wrong_type``; str() would have turned
it into a training example such as user ``42``, assistant ``['a', 'list']``. A null is a missing text
(an empty turn), as in the other formats.
"""
from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

USER, ASSISTANT = "user", "assistant"

# Reasons a record is dropped; metrics/data.json reports a count for each (0 included),
# so the keys stay stable across runs and `dvc metrics diff` always has both sides.
DROP_REASONS = (
    "malformed_json",
    "undecodable",
    "unknown_format",
    "wrong_type",
    "empty_question",
    "empty_answer",
    "answer_too_short",
    "no_assistant_turn",
    "duplicate",
)

_SPEAKERS = {
    "user": USER, "human": USER, "patient": USER, "customer": USER, "client": USER,
    "assistant": ASSISTANT, "gpt": ASSISTANT, "bot": ASSISTANT, "doctor": ASSISTANT,
    "chatgpt": ASSISTANT, "model": ASSISTANT,
}
# A speaker marker at the start of a line (or of the text): "Patient:", "<human>:", "User:" ...
_MARKER = re.compile(
    r"(?:^|\n)[ \t]*(?:<(human|bot)>|(patient|doctor|user|assistant|human))[ \t]*:[ \t]*",
    re.IGNORECASE,
)
# ChatDoctor replies sometimes run on into an invented next patient turn
# ("... urinalysis.Patient: Okay, what other tests?"): that tail is not the doctor's answer.
_LEAKED_PATIENT_TURN = re.compile(r"\s*\bPatient:\s.*\Z", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Dropped(Exception):
    """The record cannot be used; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str):
        assert reason in DROP_REASONS, reason
        super().__init__(reason)
        self.reason = reason


def clean_text(text: Any) -> str:
    """Unescape HTML entities, drop control characters, collapse runs of spaces and blank lines."""
    text = _text(text)
    if "\ufffd" in text:  # U+FFFD: the text was already mangled by a failed decode upstream
        raise Dropped("undecodable")
    text = html.unescape(html.unescape(text))  # some sources double-escape (&amp;amp;)
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text)).replace("\u00a0", " ")
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _text(value: Any) -> str:
    """A raw text field: a string, or None for a missing one; anything else is the wrong type."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Dropped("wrong_type")
    return value


def to_turns(record: dict[str, Any]) -> list[dict[str, str]]:
    """Return alternating user/assistant turns (cleaned), or raise Dropped."""
    turns = _raw_turns(record)
    turns = [(role, clean_text(content)) for role, content in turns]
    turns = _normalise(turns)
    if not turns:
        raise Dropped("no_assistant_turn")
    return [{"role": role, "content": content} for role, content in turns]


def _raw_turns(record: dict[str, Any]) -> list[tuple[str, Any]]:
    if "output" in record and "input" in record:
        # Both tutorial datasets put a fixed task ("Answer this question truthfully") in
        # `instruction` and the patient's words in `input`: an empty input is an empty question.
        return _single_turn(record.get("input"), record.get("output"))
    if "question" in record and "answer" in record:
        return _single_turn(record.get("question"), record.get("answer"))
    for key, speaker_key, text_key in (("conversations", "from", "value"), ("messages", "role", "content")):
        if key in record:
            return [_speaker_turn(t, speaker_key, text_key) for t in _list_of_turns(record[key])]
    if "text" in record:
        return _split_marked_text(_text(record["text"]))
    raise Dropped("unknown_format")


def _list_of_turns(turns: Any) -> list:
    if not isinstance(turns, list):
        raise Dropped("wrong_type")
    return turns


def _single_turn(question: Any, answer: Any) -> list[tuple[str, Any]]:
    question, answer = clean_text(question), clean_text(answer)
    answer = _LEAKED_PATIENT_TURN.sub("", answer).strip()
    if not question:
        raise Dropped("empty_question")
    if not answer:
        raise Dropped("empty_answer")
    return [(USER, question), (ASSISTANT, answer)]


def _speaker_turn(turn: Any, speaker_key: str, text_key: str) -> tuple[str, Any]:
    if not isinstance(turn, dict):
        raise Dropped("wrong_type")
    speaker = turn.get(speaker_key, "")
    if not isinstance(speaker, str):
        raise Dropped("wrong_type")
    speaker = speaker.strip().lower()
    if speaker == "system":
        _text(turn.get(text_key))  # a wrong-typed system turn is a broken record too
        return ("system", "")  # replaced by the configured system prompt
    if speaker not in _SPEAKERS:
        raise Dropped("unknown_format")
    return (_SPEAKERS[speaker], turn.get(text_key))


def _split_marked_text(text: str) -> list[tuple[str, str]]:
    matches = list(_MARKER.finditer(text))
    if not matches:
        raise Dropped("unknown_format")
    turns = []
    for match, following in zip(matches, matches[1:] + [None]):
        speaker = (match.group(1) or match.group(2)).lower()
        end = following.start() if following else len(text)
        turns.append((_SPEAKERS[speaker], text[match.end():end]))
    return turns


def _normalise(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop system/empty turns, merge same-speaker runs, trim to user-first / assistant-last."""
    merged: list[tuple[str, str]] = []
    for role, content in turns:
        if role == "system" or not content:
            continue
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + content)
        else:
            merged.append((role, content))
    while merged and merged[0][0] == ASSISTANT:  # an opening greeting by the doctor has no question
        merged.pop(0)
    if not merged:
        raise Dropped("empty_question")
    while merged and merged[-1][0] == USER:  # a trailing question has no answer to learn from
        merged.pop()
    return merged


def question_of(messages: list[dict[str, str]]) -> str:
    """The patient's last message before the final answer (what a model is asked)."""
    return [m["content"] for m in messages if m["role"] == USER][-1]


def normalised(text: str) -> str:
    """Case- and whitespace-insensitive form used for duplicate detection and split grouping."""
    return re.sub(r"\s+", " ", text).strip().lower()
