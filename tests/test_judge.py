"""The pairwise judge (meddialog/evaluation/judge.py) against real HTTP endpoints on loopback: a server that
answers garbage, one that answers A or B by rule, and nothing listening. The vLLM server as judge is in
tests/test_vllm.py."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meddialog.evaluation.judge import Endpoint, VerdictCache, combine, judge_pairs, parse_verdict
from meddialog.params import JudgeParams
from tests.conftest import free_port, run_stage, set_params, write_jsonl


def test_verdicts_are_parsed_strictly():
    assert parse_verdict("A") == "A" and parse_verdict(" B.") == "B" and parse_verdict("Tie") == "tie"
    assert parse_verdict("My verdict: [[B]] because ...") == "B"
    assert parse_verdict("Answer A is better") == "A"
    for garbage in ("", "a good answer would mention rest", "b", "Both are fine I think", "🙂"):
        assert parse_verdict(garbage) is None, garbage


def test_both_orders_make_one_outcome():
    assert combine("A", "B") == "win"      # newer preferred as A and as B
    assert combine("A", "tie") == "win"
    assert combine("B", "A") == "loss"
    assert combine("A", "A") == "tie"      # always the first position: the judge's bias, not a preference
    assert combine("tie", "tie") == "tie"
    assert combine(None, "A") is None


class Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint: /v1/models, and chat replies from `reply(user_text)`."""
    reply = staticmethod(lambda text: "A")
    calls = 0

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "judge", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": self.reply(body["messages"][-1]["content"])}}]})

    def _send(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    def start(reply):
        handler = type("Handler", (Judge,), {"reply": staticmethod(reply), "calls": 0})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    started = []
    yield start
    for server in started:
        server.shutdown()


def predictions(n: int = 4) -> dict[str, list[dict]]:
    """sft answers "rest and fluids", the others something else, so a rule can prefer sft."""
    answers = {"baseline": "no idea", "sft": "rest and fluids", "grpo": "see a doctor"}
    return {m: [{"id": f"c{i}", "question": f"question {i}", "prediction": a} for i in range(n)]
            for m, a in answers.items()}


def test_garbage_replies_are_counted_never_fatal(judge_server, tmp_path):
    url, handler = judge_server(lambda text: "The quick brown fox")
    params = JudgeParams(enabled=True, base_url=url, model="judge")
    result = judge_pairs(predictions(), params, VerdictCache(tmp_path / "cache.jsonl"), Endpoint(params))
    for row in result["pairs"].values():
        assert row["judged"] == 0 and row["failed"] == 4 and row["unparseable_replies"] == 8
        assert row["failed_requests"] == 0


def test_a_rule_judge_gives_win_loss_and_the_cache_rejudges_only_what_changed(judge_server, tmp_path):
    def prefer_sft(text):
        a = text.split("[Answer A]")[1].split("[End of answer A]")[0]
        b = text.split("[Answer B]")[1].split("[End of answer B]")[0]
        return "A" if "rest" in a else "B" if "rest" in b else "tie"
    url, handler = judge_server(prefer_sft)
    params = JudgeParams(enabled=True, base_url=url, model="judge")
    Endpoint(params).check()
    cache = VerdictCache(tmp_path / "cache.jsonl")
    result = judge_pairs(predictions(), params, cache, Endpoint(params))
    assert result["pairs"]["sft_vs_baseline"]["win"] == 1.0
    assert result["pairs"]["grpo_vs_sft"]["loss"] == 1.0
    assert result["pairs"]["grpo_vs_baseline"]["tie"] == 1.0
    assert result["pairs"]["sft_vs_baseline"]["win_low"] < 1.0  # 4 conversations: a wide interval
    assert handler.calls == 3 * 4 * 2
    changed = predictions()
    changed["grpo"][0]["prediction"] = "rest, fluids and see a doctor"
    again = judge_pairs(changed, params, VerdictCache(tmp_path / "cache.jsonl"), Endpoint(params))
    assert handler.calls == 3 * 4 * 2 + 2 * 2  # grpo's changed answer, in its two pairs, both orders
    assert again["pairs"]["sft_vs_baseline"] == result["pairs"]["sft_vs_baseline"]
    other_rubric = JudgeParams(enabled=True, base_url=url, model="judge", rubric="Prefer the shorter answer.")
    judge_pairs(predictions(), other_rubric, VerdictCache(tmp_path / "cache.jsonl"), Endpoint(other_rubric))
    assert handler.calls == 3 * 4 * 2 + 2 * 2 + 3 * 4 * 2  # a new rubric is a new question for the judge


def test_stage_with_nothing_listening_stops_in_seconds_with_one_line(tiny_project):
    metrics = tiny_project / "metrics"
    for name in ("baseline", "sft", "grpo"):
        write_jsonl(metrics / f"{name}_predictions.jsonl", predictions()[name])
    set_params(tiny_project, **{"eval.judge.enabled": True, "eval.judge.base_url": f"http://127.0.0.1:{free_port()}/v1"})
    started = time.monotonic()
    result = run_stage("judge", tiny_project)
    assert result.returncode == 1 and time.monotonic() - started < 30
    assert result.stderr.strip().splitlines()[-1].startswith("error: eval.judge: no OpenAI-compatible server answers")
    assert "Traceback" not in result.stderr


def test_stage_disabled_contacts_nothing_and_says_so(tiny_project):
    assert run_stage("judge", tiny_project).returncode == 0
    assert json.loads((tiny_project / "metrics" / "judge.json").read_text()) == {"enabled": 0}


def test_a_model_the_endpoint_does_not_serve_is_named(judge_server):
    url, _ = judge_server(lambda text: "A")
    with pytest.raises(Exception, match=r"'gpt-judge' is not served at .*\(it serves judge\)"):
        Endpoint(JudgeParams(enabled=True, base_url=url, model="gpt-judge")).check()
