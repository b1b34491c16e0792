"""The export as GGUF files for llama.cpp and Ollama, written by llama.cpp's own converter.

The converter is llama.cpp's `convert_hf_to_gguf.py` with its `conversion/` package and the `gguf-py`
library it is released with, taken from the pinned llama-cpp-python sdist (requirements-gguf.txt, with
its hash) by `make setup` into `<virtualenv>/llama.cpp/`: llama.cpp publishes no converter wheel, and the
sdist is the one pinned, hashed package that carries it (building llama-cpp-python itself is not needed).
It reads the export's tokenizer files, so the GGUF carries the chat template and the special tokens
(BOS, EOS = end of turn, pad); types: f32, f16, bf16 and q8_0 (the quantized type it writes in Python).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meddialog.errors import UserError

CONVERTER_ENV = "MEDDIALOG_GGUF_CONVERTER"  # another convert_hf_to_gguf.py, e.g. in a llama.cpp checkout


def converter() -> Path:
    """The convert_hf_to_gguf.py this environment has (see the module docstring)."""
    script = Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py")
    if not script.is_file():
        raise UserError(f"llama.cpp's GGUF converter is not installed ({script} not found): run `make setup`, "
                        f"or point {CONVERTER_ENV} at a convert_hf_to_gguf.py; `-S export.gguf_types=[]` skips GGUF")
    return script


def gguf_name(model_dir: Path, gguf_type: str) -> str:
    return f"{model_dir.name}-{gguf_type}.gguf"


def convert(model_dir: Path, out_file: Path, gguf_type: str) -> Path:
    """Convert the Hugging Face directory `model_dir` to `out_file` (written whole, or not at all)."""
    partial = out_file.with_name(out_file.name + ".partial")
    argv = [sys.executable, str(converter()), str(model_dir), "--outtype", gguf_type, "--outfile", str(partial)]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the gguf-py released with it
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"converting {model_dir} to GGUF {gguf_type} failed: {last}")
    partial.rename(out_file)
    return out_file


def modelfile(gguf_file: str, tokenizer, generation_config, system_prompt: str) -> str:
    """An Ollama Modelfile for `gguf_file`: the system prompt, every stop token, the export's decoding, and a
    ChatML template where the model uses ChatML (otherwise Ollama takes the template from the GGUF)."""
    stops = generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    lines = [f"FROM ./{gguf_file}", f'SYSTEM """{system_prompt}"""']
    lines += [f'PARAMETER stop "{tokenizer.convert_ids_to_tokens(i)}"' for i in stops]
    if generation_config.do_sample:
        lines += [f"PARAMETER temperature {generation_config.temperature}", f"PARAMETER top_p {generation_config.top_p}"]
    else:
        lines.append("PARAMETER temperature 0")
    if generation_config.max_new_tokens:
        lines.append(f"PARAMETER num_predict {generation_config.max_new_tokens}")
    if "<|im_start|>" in (tokenizer.chat_template or ""):
        # Ollama's documented ChatML template (docs/template.md); .Messages includes the SYSTEM message
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}', "{{ .Content }}<|im_end|>",
                  "{{ end }}<|im_start|>assistant", '"""']
    return "\n".join(lines) + "\n"
