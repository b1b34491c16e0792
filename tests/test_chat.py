"""The terminal chat: driven through stdin and through a real pseudo-terminal, on the tiny model and on
the embedded one (which says real words, so streaming and stopping can be seen)."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, write_params

from meddialog.params import GenerationParams


def chat(project, *args, stdin="", env=None):
    return subprocess.run([sys.executable, "-m", "meddialog.chat", *args], cwd=project, input=stdin,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.slow
def test_stdin_dialogue_answers_resets_and_exits(project, tiny_model_dir):
    write_params(project, **{"generation.max_new_tokens": 6})
    result = chat(project, "--model-path", str(tiny_model_dir), stdin="hello\n/reset\nwhat now?\n/help\n/exit\nnever read\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"Chatting with {tiny_model_dir}") and "Not medical advice" in out
    assert out.count("assistant> ") == 2 and "(new dialogue)" in out and "commands: /reset, /exit" in out


@pytest.mark.slow
def test_end_of_input_ends_the_chat_cleanly(project, tiny_model_dir):
    write_params(project, **{"generation.max_new_tokens": 4})
    result = chat(project, "--model-path", str(tiny_model_dir), stdin="hello\n")  # no /exit: EOF (Ctrl-D)
    assert result.returncode == 0 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_one_shot_prompt_prints_only_the_answer(project, tiny_model_dir):
    from meddialog.modeling.generation import generate
    from meddialog.modeling.loading import load_model
    from meddialog.params import load_params

    write_params(project, **{"generation.max_new_tokens": 8})
    result = chat(project, "--model-path", str(tiny_model_dir), "--prompt", "I have a sore throat.")
    assert result.returncode == 0, result.stderr
    params = load_params(project / "params.yaml")
    model, tokenizer = load_model(tiny_model_dir, params.model)
    expected = generate(model, tokenizer, [[{"role": "system", "content": params.data.system_prompt},
                                            {"role": "user", "content": "I have a sore throat."}]],
                        params.generation, progress=False)[0]
    assert result.stdout.strip() == expected  # the pipeline's own greedy answer, with its system prompt


@pytest.mark.parametrize(("args", "message"), [
    (["--model-path", "no/such/dir"], "error: model path no/such/dir does not exist"),
    (["--model-path", "params.yaml"], "error: model path params.yaml is not a directory"),
    (["--model-path", "data"], "error: data is neither a Hugging Face model directory"),
    (["--temperature", "0"], "error: --temperature: Input should be greater than 0"),
    (["--max-new-tokens", "64", "--context-tokens", "32"], "error: --context-tokens must be more than"),
])
def test_bad_arguments_are_one_line(project, args, message):
    result = chat(project, *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_history_is_kept_and_trimmed_to_the_context(tiny_model_dir):
    from meddialog.chat import ChatSession
    from meddialog.modeling.loading import load_model
    from meddialog.params import ModelParams

    model, tokenizer = load_model(tiny_model_dir, ModelParams(name="tiny"))
    generation = GenerationParams(max_new_tokens=4)
    session = ChatSession(model, tokenizer, "Be careful.", generation, context_tokens=10_000)
    session.reply("first question")
    session.reply("second question")
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    third = {"role": "user", "content": "third question"}

    def tokens(messages):
        return len(tokenizer.apply_chat_template([session.system, *messages], add_generation_prompt=True,
                                                 return_dict=True)["input_ids"])
    without_oldest = tokens([*session.history[2:], third])
    assert without_oldest < tokens([*session.history, third])
    session.context_tokens = without_oldest + generation.max_new_tokens  # room once the oldest exchange is gone
    trims = []
    session.reply("third question", on_trim=trims.append)
    assert trims == [2]  # the oldest exchange went, the second stayed
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["second question", "third question"]


def test_a_message_longer_than_the_context_is_refused(tiny_model_dir):
    from meddialog.chat import ChatSession
    from meddialog.errors import UserError
    from meddialog.modeling.loading import load_model
    from meddialog.params import ModelParams

    model, tokenizer = load_model(tiny_model_dir, ModelParams(name="tiny"))
    session = ChatSession(model, tokenizer, "Be careful.", GenerationParams(max_new_tokens=4), context_tokens=40)
    with pytest.raises(UserError, match="the message is too long"):
        session.reply("word " * 100)
    assert session.history == []


@pytest.mark.slow
def test_answers_stream_piece_by_piece(embedded_base_dir):
    from meddialog.chat import ChatSession
    from meddialog.modeling.loading import load_model
    from meddialog.params import ModelParams

    model, tokenizer = load_model(embedded_base_dir, ModelParams(name="embedded"))
    session = ChatSession(model, tokenizer, "You are a medical assistant.", GenerationParams(max_new_tokens=40), 8192)
    pieces = []
    answer = session.reply("What should I do about a mild headache?", on_text=pieces.append)
    assert len(pieces) > 5 and "".join(pieces).strip() == answer


def _read_until(fd, marker: str, timeout: float = 120) -> str:
    seen, deadline = "", time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:  # the child closed the terminal
                break
    return seen


def _spawn_in_pty(project, *args):
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        # as in a user's shell: Ctrl-C interrupts (a test runner started in the background may ignore SIGINT,
        # and an ignored signal stays ignored across exec)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(project)
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "meddialog.chat", *args])
    return pid, fd


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["\x04", "\x03"], ids=["ctrl-d", "ctrl-c"])
def test_terminal_session(project, tiny_model_dir, ending):
    write_params(project, **{"generation.max_new_tokens": 6})
    pid, fd = _spawn_in_pty(project, "--model-path", str(tiny_model_dir))
    _read_until(fd, "you> ")
    os.write(fd, b"What is a fever?\r")
    answer = _read_until(fd, "you> ")
    assert "assistant> " in answer and answer.split("assistant> ")[1].replace("you> ", "").strip()
    os.write(fd, b"/reset\r")
    assert "(new dialogue)" in _read_until(fd, "you> ")
    os.write(fd, ending.encode())
    assert _exit_code(pid, timeout=60) == 0
    os.close(fd)


def _exit_code(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the chat did not exit within {timeout} s")


# A Ctrl-C whose first nudge wakes nothing (it lands between readline printing the prompt and entering
# select(), modelled by ignoring SIGUSR1 for a moment), then a blocking select() like readline's: the
# watcher must nudge again, and each Ctrl-C must raise exactly once.
LOST_NUDGE = """
import os, select, signal, time
from meddialog.chat import route_ctrl_c_to_this_thread

route_ctrl_c_to_this_thread(nudge_every=0.05)
read_end, _ = os.pipe()
for attempt in range(2):
    handler = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    signal.signal(signal.SIGUSR1, handler)
    try:
        select.select([read_end], [], [])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
time.sleep(0.3)
print("done")
"""


def test_a_ctrl_c_whose_first_nudge_is_lost_still_interrupts_a_blocking_read_once():
    result = subprocess.run([sys.executable, "-c", LOST_NUDGE], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["interrupted", "interrupted", "done"]


@pytest.mark.slow
def test_ctrl_c_stops_an_answer_being_generated(project, embedded_base_dir):
    write_params(project, **{"generation.max_new_tokens": 400})
    pid, fd = _spawn_in_pty(project, "--model-path", str(embedded_base_dir))
    _read_until(fd, "you> ")
    os.write(fd, b"Explain in great detail how the kidneys filter blood, step by step.\r")
    streamed = _read_until(fd, "assistant> ")
    streamed += os.read(fd, 4096).decode(errors="replace")  # the first words have arrived: it is generating
    os.write(fd, b"\x03")
    assert "(interrupted)" in _read_until(fd, "(interrupted)")
    assert _exit_code(pid, timeout=60) == 0
    os.close(fd)
