"""Chat with a model in the terminal, answers streamed as they are generated.

    python -m meddialog.chat --model-path models/export
    python -m meddialog.chat --model-path models/grpo --prompt "I have had a fever for two days."

--model-path is the export, a pipeline adapter (models/sft, models/grpo: its lineage names the chain
below it) or any model directory (models/base). The dialogue starts with `data.system_prompt` and
decodes as `generation.*` in params.yaml says (greedy by default); the flags override that. The history
is kept within the model's context: when the next prompt would not leave room for an answer, the oldest
exchanges are dropped, with a notice. `/reset` starts a new dialogue, `/exit`, Ctrl-D or Ctrl-C ends it.
With --prompt, one answer is printed and the program exits (for scripts).
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from meddialog import cli
from meddialog.errors import UserError
from meddialog.params import GenerationParams

BANNER = "Chatting with {path} ({context} tokens of context). /reset starts over, /exit or Ctrl-D quits."
DISCLAIMER = "Not medical advice: answers can be wrong. In an emergency, call your local emergency number."


class ChatSession:
    """One dialogue with a loaded model: history, trimming to the context, streamed replies."""

    def __init__(self, model, tokenizer, system_prompt: str, generation: GenerationParams, context_tokens: int):
        self.model, self.tokenizer = model, tokenizer
        self.system = {"role": "system", "content": system_prompt}
        self.generation = generation
        self.context_tokens = context_tokens
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str, on_text: Callable[[str], None] = lambda _: None,
              on_trim: Callable[[int], None] = lambda _: None) -> str:
        """Answer `text` after the history; `on_text` gets the answer piece by piece as it is generated,
        `on_trim` the number of earlier messages dropped to make room (only when some were)."""
        import torch

        from meddialog.modeling.generation import generate_kwargs, until_stop

        self.history.append({"role": "user", "content": text})
        input_ids, dropped = self._fitted_prompt()
        if dropped:
            on_trim(dropped)
        settings = generate_kwargs(self.tokenizer, self.model.generation_config, self.generation)
        streamer = _streamer(self.tokenizer, on_text)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         streamer=streamer, **settings)
        answer_ids = until_stop(output[0, input_ids.shape[1]:].tolist(), set(settings["eos_token_id"]))
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _fitted_prompt(self):
        """The prompt's token ids, after dropping the oldest exchanges until an answer fits the context."""
        budget = self.context_tokens - self.generation.max_new_tokens
        dropped = 0
        while True:
            ids = self.tokenizer.apply_chat_template([self.system, *self.history], add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)["input_ids"]
            if ids.shape[1] <= budget:
                return ids.to(self.model.device), dropped
            if len(self.history) <= 1:
                self.history.pop()
                raise UserError(f"the message is too long: {ids.shape[1]} prompt tokens, and the model has "
                                f"{self.context_tokens} of context, {self.generation.max_new_tokens} of them "
                                "kept for the answer")
            cut = 2 if self.history[1]["role"] == "assistant" else 1  # an exchange: question and answer
            del self.history[:cut]
            dropped += cut


def _streamer(tokenizer, on_text: Callable[[str], None]):
    """transformers' TextStreamer, handing the decoded text to `on_text` instead of printing it."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def context_size(model, tokenizer) -> int:
    """Tokens the model can attend to: its config's positions, or the tokenizer's limit if that is smaller."""
    positions = getattr(model.config, "max_position_embeddings", None) or 2048
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < 10**7 else positions
    return min(positions, limit)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m meddialog.chat", description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", type=Path, default=Path("models/export"),
                        help="export, adapter or model directory (default models/export)")
    parser.add_argument("--prompt", help="answer this one message and exit")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    parser.add_argument("--sample", action=argparse.BooleanOptionalAction, default=None,
                        help="sample (--sample) or decode greedily (--no-sample); default: generation.do_sample")
    parser.add_argument("--temperature", type=float, help="default: generation.temperature")
    parser.add_argument("--top-p", type=float, help="default: generation.top_p")
    parser.add_argument("--max-new-tokens", type=int, help="default: generation.max_new_tokens")
    parser.add_argument("--context-tokens", type=int, help="history budget (default: the model's context)")
    return parser.parse_args(argv)


def generation_settings(args: argparse.Namespace, defaults: GenerationParams) -> GenerationParams:
    """params.yaml's generation section with the flags given applied, checked as params.yaml would be."""
    from pydantic import ValidationError

    flags = {"do_sample": args.sample, "temperature": args.temperature, "top_p": args.top_p,
             "max_new_tokens": args.max_new_tokens}
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return GenerationParams(**{**dataclasses.asdict(defaults), **given})
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"--{str(first['loc'][-1]).replace('_', '-')}: {first['msg']}") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    route_ctrl_c_to_this_thread()
    _converse(_start(args), args)


def route_ctrl_c_to_this_thread(nudge_every: float = 0.1) -> None:
    """Make Ctrl-C raise KeyboardInterrupt here, whatever thread the kernel hands SIGINT to.

    A process-wide SIGINT goes to any thread that does not block it; torch's and the tokenizer's worker
    threads would take it, and input() (in this thread) would wait on forever. So SIGINT is blocked in
    this thread, and every thread started from now on inherits that mask; one watcher thread accepts it
    with sigwait and interrupts this thread with SIGUSR1, whose handler raises KeyboardInterrupt (also
    in the middle of a generation, between two tokens).

    One SIGUSR1 is not enough: readline waits in select() with no timeout, and a signal that lands
    after the prompt is printed but before select() is entered wakes nothing, so the chat would hang
    at the prompt (seen once in CI on a loaded machine). The watcher repeats the nudge every
    `nudge_every` seconds until the handler has run; the handler raises once per Ctrl-C, however many
    nudges arrive."""
    this = threading.get_ident()
    pending = False  # a Ctrl-C not yet raised: one flag, set by the watcher, cleared by the handler

    def interrupt(signum, frame) -> None:
        nonlocal pending
        if pending:  # a late nudge, after this Ctrl-C was raised, finds it False and does nothing
            pending = False
            raise KeyboardInterrupt

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    signal.signal(signal.SIGUSR1, interrupt)

    def forward() -> None:
        nonlocal pending
        while True:
            signal.sigwait({signal.SIGINT})
            pending = True
            while pending:
                signal.pthread_kill(this, signal.SIGUSR1)
                time.sleep(nudge_every)

    threading.Thread(target=forward, name="ctrl-c", daemon=True).start()


def _start(args: argparse.Namespace) -> ChatSession:
    """Params, checked, then the model and the session."""
    import torch

    from meddialog.modeling.loading import load_model, model_chain
    from meddialog.params import load_params

    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty")
    params = load_params(args.params)
    generation = generation_settings(args, params.generation)
    if args.context_tokens is not None and args.context_tokens <= generation.max_new_tokens:
        raise UserError(f"--context-tokens must be more than the answer length ({generation.max_new_tokens})")
    base, adapters = model_chain(args.model_path)  # a bad path fails here, before anything heavy loads
    torch.manual_seed(params.seed)
    model, tokenizer = load_model(base, params.model, adapters)
    context = args.context_tokens or context_size(model, tokenizer)
    return ChatSession(model, tokenizer, params.data.system_prompt, generation, context)


def _converse(session: ChatSession, args: argparse.Namespace) -> None:
    write = _writer(sys.stdout)
    trimmed = _trim_notice

    if args.prompt is not None:
        session.reply(args.prompt, on_text=write, on_trim=trimmed)
        write("\n")
        return
    if sys.stdin.isatty():
        import readline  # noqa: F401  line editing and ↑ history in input(), whose prompt then goes to stdout
    print(BANNER.format(path=args.model_path, context=session.context_tokens), DISCLAIMER, sep="\n", flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: a clean end
            print()
            return
        if not line:
            continue
        if line == "/exit":
            return
        if line == "/reset":
            session.reset()
            print("(new dialogue)", flush=True)
            continue
        if line.startswith("/"):
            print("commands: /reset, /exit", flush=True)
            continue
        write("assistant> ")
        try:
            session.reply(line, on_text=write, on_trim=trimmed)
        except KeyboardInterrupt:
            session.history.pop()  # the unanswered question
            print("\n(interrupted)")
            return
        except UserError as err:
            print(f"error: {err}", flush=True)
            continue
        write("\n")


def _writer(stream) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def _trim_notice(dropped: int) -> None:
    print(f"(dropped the {dropped} oldest messages to fit the model's context)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    cli.run(main)
