"""vLLM, for real: its environment check, the server behind `make serve` queried with the openai client,
generation.backend vllm against the transformers backend, and why GRPO's vLLM rollout is refused on the CPU.

The slow tests start real servers from .venv-vllm (`make setup-vllm`; `make test` builds it first).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from meddialog.evaluation.judge import parse_verdict
from meddialog.modeling.generation import generate, stop_token_ids
from meddialog.params import GenerationParams, VllmParams, load_params
from meddialog.vllm.client import chat_answers, request_body
from meddialog.vllm.environment import check
from meddialog.vllm.server import ServerSpec, server_command
from tests.conftest import REPO, make_adapter, read_jsonl, run_stage, set_params, stop, write_jsonl, write_params

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
ENGINE = VllmParams(python=str(VLLM_PYTHON), max_model_len=1024, startup_timeout_s=300, request_timeout_s=300)
QUESTIONS = ["What is a fever?", "How should I treat a mild burn at home?", "Why do my knees hurt when it rains?",
             "Is it safe to take ibuprofen with coffee?", "What are the early signs of diabetes?",
             "How much water should an adult drink a day?", "Can stress cause chest pain?",
             "What should I do after a bee sting?"]


def conversations(system_prompt: str) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def usable_vllm():
    status = check(VLLM_PYTHON)
    assert status.usable, f"{status.describe()} (`make setup-vllm` builds it; `make test` does so first)"
    return status


@dataclass
class Served:
    base_url: str
    process: subprocess.Popen  # `python -m meddialog.serve`
    family: list[int]          # every process under it: vLLM's API server and its engine core


@pytest.fixture(scope="module")
def server(usable_vllm, embedded_base_dir):
    """`python -m meddialog.serve` (what `make serve` runs) on the embedded model (float32, read from its
    config) on a free loopback port. The last server test stops it with SIGTERM."""
    import psutil

    from tests.conftest import free_port

    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "meddialog.serve", "--model-path", str(embedded_base_dir),
                              "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**_env(), "PYTHONPATH": str(REPO)})
    try:
        lines = []
        for line in serve.stdout:  # until it says the server is up, or it exits
            lines.append(line)
            if line.startswith("serving "):
                break
        assert serve.poll() is None, "".join(lines[-20:])
        assert f"at http://127.0.0.1:{port}/v1" in lines[-1]
        yield Served(f"http://127.0.0.1:{port}", serve, [p.pid for p in psutil.Process(serve.pid).children(recursive=True)])
    finally:
        if serve.poll() is None:
            serve.kill()


# ---------------------------------------------------------------- request and command mapping (fast)

def test_requests_pin_every_decoding_setting():
    greedy = request_body("m", [], GenerationParams(max_new_tokens=40), [2, 7], seed=5)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and "seed" not in greedy
    assert (greedy["max_tokens"], greedy["stop_token_ids"], greedy["top_k"], greedy["repetition_penalty"]) == \
        (40, [2, 7], -1, 1.0)
    sampled = request_body("m", [], GenerationParams(do_sample=True, temperature=0.7, top_p=0.9), [2], seed=5)
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.7, 0.9, 5)


def test_server_command_names_dtype_host_and_model(tmp_path):
    argv = server_command(ENGINE, ServerSpec(tmp_path, "meddialog", "float32", port=1234), 1234)
    joined = " ".join(argv)
    assert argv[:3] == [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
    for flag in (f"--model {tmp_path}", "--served-model-name meddialog", "--host 127.0.0.1", "--port 1234",
                 "--dtype float32", "--max-model-len 1024", "--generation-config auto", "--enforce-eager"):
        assert flag in joined
    assert "--trust-remote-code" not in argv and "--quantization" not in argv


def test_environment_check_names_the_fix(tmp_path):
    missing = check(tmp_path / "no-such-python")
    assert not missing.usable and "make setup-vllm" in missing.reason
    main_venv = check(Path(sys.executable))  # the main stack has no vLLM
    assert not main_venv.usable and "make setup-vllm" in main_venv.reason


def test_vllm_backend_without_vllm_stops_before_loading(tiny_project):
    write_params(tiny_project, **{"generation.backend": "vllm", "vllm.python": "no/such/python",
                                  "baseline.num_samples": 2})
    result = run_stage("baseline", tiny_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: generation.backend is vllm, but vLLM is not usable")
    assert "make setup-vllm" in result.stderr and not (tiny_project / "metrics" / "baseline.json").exists()


def test_serve_refuses_a_missing_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "meddialog.serve", "--model-path", str(tmp_path / "nothing"),
                             "--params", str(REPO / "params.yaml")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "is not a model directory" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- the real server

@pytest.mark.slow
def test_server_answers_like_transformers_plain_streamed_and_concurrent(server, embedded_base_dir):
    """8 concurrent chat completions through the openai client, greedy, identical to transformers'
    batched greedy answers on the same float32 weights; a streamed answer equals the plain one."""
    from openai import OpenAI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    running = server
    system_prompt = load_params(REPO / "params.yaml").data.system_prompt
    prompts = conversations(system_prompt)
    client = OpenAI(base_url=f"{running.base_url}/v1", api_key="unused", max_retries=0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_base_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(embedded_base_dir)
    generation = GenerationParams(max_new_tokens=48, batch_size=8)
    stops = stop_token_ids(tokenizer, model.generation_config)

    def ask(messages):
        reply = client.chat.completions.create(model="meddialog", messages=messages, max_tokens=48, temperature=0,
                                               extra_body={"stop_token_ids": stops, "top_k": -1})
        return reply.choices[0].message.content.strip(), reply.choices[0].finish_reason

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, prompts))
    expected = generate(model, tokenizer, prompts, generation, progress=False)
    assert [text for text, _ in replies] == expected
    assert {reason for _, reason in replies} <= {"stop", "length"} and all(text for text, _ in replies)

    stream = client.chat.completions.create(model="meddialog", messages=prompts[0], max_tokens=48, temperature=0,
                                            stream=True, extra_body={"stop_token_ids": stops})
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1, "streamed as one piece"
    assert "".join(pieces).strip() == expected[0]

    # the backend's client: same answers through plain HTTP, with the pipeline's pinned request
    assert chat_answers(running.base_url, "meddialog", prompts, generation, stops, seed=0, timeout_s=300) == expected


@pytest.mark.slow
def test_server_refuses_bad_requests_and_stays_up(server):
    import httpx

    running = server
    url = f"{running.base_url}/v1/chat/completions"
    bad = {"not json": httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}),
           "no messages": httpx.post(url, json={"model": "meddialog"}),
           "unknown model": httpx.post(url, json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
           "negative max_tokens": httpx.post(url, json={"model": "meddialog", "max_tokens": -3,
                                                        "messages": [{"role": "user", "content": "hi"}]})}
    for what, response in bad.items():
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:200])
    assert httpx.get(f"{running.base_url}/health").status_code == 200
    again = httpx.post(url, json={"model": "meddialog", "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "hi"}]}, timeout=120)
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"]


JUDGED = {"baseline": "I don't know.", "sft": "Rest, drink fluids and see a doctor if it gets worse.",
          "grpo": "See a doctor today if it gets worse; rest and drink fluids meanwhile."}


def judge_project(project: Path, base_url: str) -> Path:
    """The judge stage's inputs: predictions of the three models on QUESTIONS, the served model as judge."""
    metrics = project / "metrics"
    metrics.mkdir(exist_ok=True)
    for name, answer in JUDGED.items():
        (metrics / f"{name}.json").write_text("{}")
        write_jsonl(metrics / f"{name}_predictions.jsonl",
                    [{"id": f"c{i}", "question": q, "prediction": answer} for i, q in enumerate(QUESTIONS[:4])])
    set_params(project, **{"eval.judge.enabled": True, "eval.judge.base_url": f"{base_url}/v1",
                           "eval.judge.model": "meddialog", "eval.judge.max_tokens": 6})
    return project


@pytest.mark.slow
def test_the_server_judges_and_a_rerun_asks_it_nothing(server, project):
    """The judge stage against the real server, the embedded model standing in as judge. Its verdicts mean
    nothing (a 135M model); the test proves the plumbing: every reply it gave is cached, and the counts in
    metrics/judge.json are what parse_verdict makes of those replies."""
    judge_project(project, server.base_url)
    first = run_stage("judge", project)
    assert first.returncode == 0, first.stderr[-2000:]
    cached = [json.loads(line)["reply"] for line in (project / "scratch/judge/cache.jsonl").read_text().splitlines()]
    assert len(cached) == 3 * 4 * 2  # three pairs, four conversations, both orders
    result = json.loads((project / "metrics/judge.json").read_text())
    rows = result["pairs"].values()
    assert result["enabled"] == 1 and set(result["pairs"]) == {"sft_vs_baseline", "grpo_vs_sft", "grpo_vs_baseline"}
    assert all(row["failed_requests"] == 0 and row["judged"] + row["failed"] == 4 for row in rows)
    assert sum(row["unparseable_replies"] for row in rows) == sum(parse_verdict(r) is None for r in cached)
    for row in rows:
        assert row["judged"] == 0 or abs(row["win"] + row["tie"] + row["loss"] - 1) < 1e-5
    again = run_stage("judge", project)
    assert again.returncode == 0 and "judge: 24 of 24 verdicts from the cache" in again.stderr, again.stderr[-2000:]
    assert json.loads((project / "metrics/judge.json").read_text()) == result


@pytest.mark.slow
def test_sigterm_stops_the_server_and_every_process_it_started(server):
    """The last server test: `kill` (SIGTERM, what systemd and docker send) to `make serve` stops vLLM's
    whole process group, not the launcher alone. (Ctrl-C takes the same way out: exit 130.)"""
    assert len(server.family) >= 2, "vLLM's API server and its engine core"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 128 + signal.SIGTERM
    assert not still_running(server.family), "left running after SIGTERM"


@pytest.mark.slow
def test_the_judge_stage_on_the_killed_server_stops_in_seconds_with_one_line(server, project):
    """After the SIGTERM test (or, run alone, after stopping it here): the server that judged is gone."""
    stop(server.process)
    judge_project(project, server.base_url)
    started = time.monotonic()
    result = run_stage("judge", project)
    assert result.returncode == 1 and time.monotonic() - started < 30
    assert result.stderr.strip().splitlines()[-1].startswith("error: eval.judge: no OpenAI-compatible server answers")
    assert "Traceback" not in result.stderr and not (project / "metrics/judge.json").exists()


@pytest.mark.slow
def test_vllm_backend_scores_an_adapter_chain_like_transformers(usable_vllm, embedded_base_dir, tmp_path):
    """tools.evaluate on base + a LoRA adapter with both backends: the same predictions, and provenance
    that says which backend made them (vLLM serves the cached full-precision merge)."""
    adapter = make_adapter(embedded_base_dir, tmp_path / "adapter", lora_b_scale=0.02)
    test_data = REPO / "data" / "sample" / "dialogues.jsonl"
    out = {}
    for backend in ("transformers", "vllm"):
        params = tmp_path / f"{backend}.yaml"
        write_params(tmp_path, **{"generation.backend": backend, "generation.max_new_tokens": 40,
                                  "vllm.python": str(VLLM_PYTHON), "vllm.max_model_len": 1024})
        (tmp_path / "params.yaml").rename(params)
        result = subprocess.run([sys.executable, "-m", "tools.evaluate", "--model-path", str(adapter), "--test-data",
                                 str(test_data), "--num-samples", "6", "--params", str(params),
                                 "--out", str(tmp_path / backend / "run.json")],
                                capture_output=True, text=True, cwd=tmp_path,
                                env={**_env(), "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr[-2000:]
        out[backend] = read_jsonl(tmp_path / backend / "run_predictions.jsonl")
        provenance = json.loads((tmp_path / backend / "provenance" / "run.json").read_text())
        assert provenance["generation_backend"] == backend
    assert [r["prediction"] for r in out["vllm"]] == [r["prediction"] for r in out["transformers"]]
    assert len({r["prediction"] for r in out["vllm"]}) == 6
    assert provenance["vllm"] == usable_vllm.versions["vllm"] and "merged" in provenance["served_model_dir"]


@pytest.mark.slow
def test_cpu_vllm_cannot_take_trl_weight_sync(usable_vllm, embedded_base_dir):
    """Why the grpo stage refuses grpo.use_vllm on the CPU: TRL's colocate sync (model_runner.model.load_weights)
    into vLLM's CPU engine fails, because the CPU backend left an empty tensor where the weight was. When a vLLM
    release takes the sync, this fails: lift the refusal in meddialog/training/vllm_rollout.py."""
    result = subprocess.run([str(VLLM_PYTHON), str(REPO / "meddialog" / "vllm" / "weight_sync_probe.py"),
                             str(embedded_base_dir)], capture_output=True, text=True, timeout=600,
                            env={**_env(), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["synced"] is False, "vLLM's CPU engine took the weight sync: grpo.use_vllm may run on the CPU now"
    assert "torch.Size([0])" in report["error"] or "weight_loader" in report["error"], report


def still_running(pids: list[int], grace_s: float = 30.0) -> list[int]:
    """Those of `pids` still alive (zombies aside) after up to `grace_s` seconds of waiting for them to end."""
    import psutil

    deadline = time.monotonic() + grace_s
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

