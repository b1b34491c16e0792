"""The opt-in pairwise judge: which of two models' answers does an LLM judge prefer? (`eval.judge.*`)

Any OpenAI-compatible chat endpoint judges (a vLLM server, a hosted API); the key comes only from the
environment variable `eval.judge.api_key_env` names, never from params. Every pair of answers is judged in
both orders, because judges favour a position (HuatuoGPT-II and MT-Bench do the same): from the newer
model's side, win+win or win+tie is a win, loss+loss or loss+tie a loss, tie+tie or win+loss (the judge
contradicting itself) a tie. A conversation with a reply that cannot be parsed or a request that failed is
counted as failed and left out of the rates; the stage goes on. An endpoint that does not answer at all
stops the stage at once, with one line.

Verdicts are cached (scratch/judge/cache.jsonl) under a hash of (question, first answer, second answer,
judge model, rubric), so a rerun after one model changed re-judges only that model's pairs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from meddialog.errors import UserError
from meddialog.evaluation.intervals import PAIRS, wilson_interval
from meddialog.params import JudgeParams

log = logging.getLogger(__name__)

OUTCOMES = ("win", "tie", "loss")
PROBE_TIMEOUT_S = 5.0  # the endpoint check: a down server is reported in seconds, not after timeout_s
_BRACKETED = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE)
_LEADING = re.compile(r"^\W*(?:[Aa]nswer\s*|[Vv]erdict\s*:?\s*)?(A|B|TIE|[Tt]ie)\b")


def judge_messages(rubric: str, question: str, first: str, second: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": rubric},
            {"role": "user", "content": f"Patient's question:\n{question}\n\n[Answer A]\n{first}\n[End of answer A]\n\n"
                                        f"[Answer B]\n{second}\n[End of answer B]\n\n"
                                        "Which answer is better? Reply with exactly one of: A, B, tie."}]


def parse_verdict(reply: str) -> str | None:
    """'A', 'B' or 'tie'; None for anything else (counted as unparseable)."""
    match = _BRACKETED.search(reply) or _LEADING.search(reply.strip())
    if not match:
        return None
    verdict = match.group(1)
    return "tie" if verdict.lower() == "tie" else verdict.upper()


def combine(newer_first: str | None, newer_second: str | None) -> str | None:
    """The outcome for the newer model from its two verdicts (as answer A, then as answer B)."""
    if newer_first is None or newer_second is None:
        return None
    seen = {{"A": "win", "B": "loss"}.get(newer_first, "tie"), {"B": "win", "A": "loss"}.get(newer_second, "tie")}
    if seen in ({"win"}, {"win", "tie"}):
        return "win"
    if seen in ({"loss"}, {"loss", "tie"}):
        return "loss"
    return "tie"


def cache_key(question: str, first: str, second: str, params: JudgeParams) -> str:
    payload = json.dumps([question, first, second, params.model, params.rubric], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache:
    """Replies by cache_key, appended one JSON line at a time (a run stopped midway keeps what it judged)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.replies[entry["key"]] = entry["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that pair is judged again
        self.hits = 0
        self._lock = threading.Lock()  # the judge's requests run in a thread pool

    def get(self, key: str) -> str | None:
        with self._lock:
            reply = self.replies.get(key)
            self.hits += reply is not None
            return reply

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self.replies[key] = reply
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")


@dataclass
class Endpoint:
    """The judge's OpenAI-compatible endpoint."""
    params: JudgeParams

    def __post_init__(self):
        from openai import OpenAI

        key = os.environ.get(self.params.api_key_env) or "not-needed"  # local servers take any key
        self.client = OpenAI(base_url=self.params.base_url, api_key=key, timeout=self.params.timeout_s, max_retries=0)

    def check(self) -> None:
        """Stop in seconds with one line when nothing answers at base_url or it does not serve the model."""
        import openai

        try:
            served = [m.id for m in self.client.with_options(timeout=PROBE_TIMEOUT_S).models.list()]
        except openai.APIConnectionError as err:
            raise UserError(f"eval.judge: no OpenAI-compatible server answers at {self.params.base_url} "
                            f"({_reason(err)}); start one (`make serve`, docs/evaluation.md) or set "
                            "eval.judge.enabled false") from None
        except openai.APIStatusError as err:
            raise UserError(f"eval.judge: {self.params.base_url} answered HTTP {err.status_code} to /models"
                            f"{' (set the key in $' + self.params.api_key_env + ')' if err.status_code == 401 else ''}"
                            ) from None
        if self.params.model not in served:
            raise UserError(f"eval.judge.model: {self.params.model!r} is not served at {self.params.base_url} "
                            f"(it serves {', '.join(served) or 'nothing'})")

    def reply(self, messages: list[dict[str, str]]) -> str | None:
        """The judge's text, or None for a failed request (an HTTP error or a timeout): counted, not fatal.
        A connection that can no longer be made (the server went away) stops the stage."""
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.params.model, messages=messages, temperature=0.0, max_tokens=self.params.max_tokens)
        except openai.APITimeoutError:
            return None
        except openai.APIConnectionError as err:
            raise UserError(f"eval.judge: the server at {self.params.base_url} stopped answering ({_reason(err)}); "
                            "the verdicts so far are cached, rerun when it is back") from None
        except openai.APIStatusError as err:
            log.warning("judge request failed: HTTP %s", err.status_code)
            return None
        return response.choices[0].message.content or ""


def _reason(err: Exception) -> str:
    cause = err.__cause__ or err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return str(cause).splitlines()[0] if str(cause) else type(cause).__name__


def judge_pairs(predictions: dict[str, list[dict]], params: JudgeParams, cache: VerdictCache,
                endpoint: Endpoint) -> dict:
    """metrics/judge.json's content: per pair, win/tie/loss rates with Wilson intervals and the counts."""
    by_id = {model: {row["id"]: row for row in rows} for model, rows in predictions.items()}
    jobs = []  # (pair, conversation id, order, messages, key)
    for newer, older in PAIRS:
        shared = [cid for cid in by_id[newer] if cid in by_id[older]]
        for cid in shared:
            question, a, b = by_id[newer][cid]["question"], by_id[newer][cid]["prediction"], by_id[older][cid]["prediction"]
            for order, (first, second) in enumerate(((a, b), (b, a))):
                jobs.append(((newer, older), cid, order, judge_messages(params.rubric, question, first, second),
                             cache_key(question, first, second, params)))

    def run(job) -> str | None:
        key = job[4]
        cached = cache.get(key)
        if cached is not None:
            return cached
        reply = endpoint.reply(job[3])
        if reply is not None:
            cache.put(key, reply)
        return reply

    with ThreadPoolExecutor(max_workers=params.concurrency) as pool:
        replies = list(pool.map(run, jobs))
    verdicts: dict[tuple, dict[tuple, list]] = {}
    failed_requests: dict[tuple, int] = {}
    for job, reply in zip(jobs, replies):
        pair, cid, order = job[0], job[1], job[2]
        verdicts.setdefault(pair, {}).setdefault(cid, [None, None])[order] = None if reply is None else parse_verdict(reply)
        failed_requests[pair] = failed_requests.get(pair, 0) + (reply is None)
    out = {"enabled": 1, "pairs": {}}  # numbers only: DVC metrics (the judge's name is in params)
    for (newer, older), per_conversation in verdicts.items():
        outcomes = [combine(*v) for v in per_conversation.values()]
        judged = [o for o in outcomes if o is not None]
        row = {"judged": float(len(judged)), "failed": float(len(outcomes) - len(judged)),
               "failed_requests": float(failed_requests[(newer, older)]),
               "unparseable_replies": float(sum(v is None for pair_v in per_conversation.values() for v in pair_v)
                                            - failed_requests[(newer, older)])}
        for outcome in OUTCOMES:
            hits = judged.count(outcome)
            row[outcome] = round(hits / len(judged), 6) if judged else 0.0
            row[f"{outcome}_low"], row[f"{outcome}_high"] = wilson_interval(hits, len(judged))
        out["pairs"][f"{newer}_vs_{older}"] = row
    log.info("judge: %d of %d verdicts from the cache", cache.hits, len(jobs))
    return out
