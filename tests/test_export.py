"""The export stage, its model card, its DVC artifact and the GGUF files, on the tiny pipeline run
(`tiny_run`: `dvc repro` of the whole pipeline on the tiny random model), checked with plain
transformers in processes that import nothing of this repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clone_with_cache, make_adapter, ok, read_jsonl, run_stage, sh, write_params

pytestmark = pytest.mark.slow  # they share tiny_run, a whole `dvc repro` (about a minute)

# Greedy answers with plain transformers, one conversation at a time (the stage batches: this is another
# way to the same answers), in a process of its own that imports nothing of this repository.
PLAIN_ANSWERS = r"""
import json, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
export, predictions, processed = map(Path, sys.argv[1:4])
tokenizer = AutoTokenizer.from_pretrained(export)
model = AutoModelForCausalLM.from_pretrained(export)
conversations = {}
for test in processed.glob("*/test.jsonl"):
    for line in test.read_text().splitlines():
        record = json.loads(line)
        conversations[record["id"]] = record["messages"]
out = {}
for line in predictions.read_text().splitlines():
    row = json.loads(line)
    messages = conversations[row["id"]]
    prompt = messages[:max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs)
    out[row["id"]] = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
print(json.dumps(out))
"""


def plain_process(*args, cwd):
    return subprocess.run([sys.executable, "-I", "-c", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_export_loads_with_plain_transformers_and_answers_as_evaluated(tiny_run):
    export = tiny_run / "models" / "export"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "lineage.json",
            "README.md"} <= {p.name for p in export.iterdir()}
    assert not list(export.glob("*.bin")) and not list(export.glob("adapter_*"))  # one merged model, no pickle
    result = plain_process(PLAIN_ANSWERS, str(export), str(tiny_run / "metrics" / "grpo_predictions.jsonl"),
                           str(tiny_run / "data" / "processed"), cwd=tiny_run.parent)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    predictions = {r["id"]: r["prediction"] for r in read_jsonl(tiny_run / "metrics" / "grpo_predictions.jsonl")}
    assert answers == predictions and len(answers) == 4
    summary = json.loads((tiny_run / "metrics" / "export.json").read_text())
    assert summary["parity_identical"] == summary["parity_compared"] == 4 and summary["parity_expected"] == 1


def test_each_adapter_of_the_chain_changes_the_export(tiny_run):
    lineage = json.loads((tiny_run / "models" / "export" / "lineage.json").read_text())
    assert [a["path"] for a in lineage["adapters"]] == ["models/sft", "models/grpo"]
    assert [a["lora_alpha"] for a in lineage["adapters"]] == [4, 4]  # lora.alpha of the tiny run, carried over
    assert 0 < lineage["tensors_changed"] <= lineage["tensors_compared"]
    # each merge moves the model's outputs: base → sft → grpo (training two steps barely moves 4-token answers,
    # so the logits are compared)
    import torch
    from transformers import AutoModelForCausalLM

    from meddialog.modeling.merge import merged_model

    models = tiny_run / "models"
    chain = [AutoModelForCausalLM.from_pretrained(models / "base"),
             merged_model(models / "base", (models / "sft",), "float32"),
             AutoModelForCausalLM.from_pretrained(models / "export")]
    ids = torch.tensor([[1, 42, 7, 99, 2024]])
    with torch.no_grad():
        logits = [m(ids).logits for m in chain]
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[1], logits[2])


def test_generation_config_carries_the_stop_ids_and_the_decoding(tiny_run):
    from transformers import AutoTokenizer

    export = tiny_run / "models" / "export"
    config = json.loads((export / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in config["eos_token_id"]
    assert config["pad_token_id"] == tokenizer.pad_token_id
    assert config["max_new_tokens"] == 4 and config["do_sample"] is False  # generation.* of the tiny run
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                    add_generation_prompt=True, tokenize=False)


def _front_matter(card: str) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(card.split("---")[1])


def test_model_card_numbers_come_from_the_metrics(tiny_run):
    card = (tiny_run / "models" / "export" / "README.md").read_text()
    front = _front_matter(card)
    assert front["pipeline_tag"] == "text-generation" and front["library_name"] == "transformers"
    assert {"medical", "sft", "grpo"} <= set(front["tags"]) and front["license"]
    metrics = tiny_run / "metrics"
    row = card.split("| rougeL |")[1].split("\n")[0]
    assert [float(x) for x in row.strip(" |").split("|")] == pytest.approx(
        [json.loads((metrics / f"{n}.json").read_text())["rougeL"] for n in ("baseline", "sft", "grpo")], abs=5e-5)
    data = json.loads((metrics / "data.json").read_text())
    assert f"| {data['healthcaremagic.kept']} of {data['healthcaremagic.in']} |" in card
    sft = json.loads((metrics / "sft_train.json").read_text())
    assert f"eval loss {sft['eval_loss_start']:.4f} → {sft['eval_loss']:.4f}" in card
    assert "Not a medical device and not medical advice" in card
    # the tiny run's params were set before `dvc repro` and committed after: the card names them as -S flags
    assert "git checkout " in card and "-S 'sft.max_steps=2'" in card and "-S 'lora.r=2'" in card


def test_model_card_lists_the_params_an_experiment_changed():
    from meddialog.export.card import _changed_params

    assert _changed_params({"sft": {"lr": 5e-4, "epochs": 1}, "seed": 42},
                           {"sft": {"lr": 1e-4, "epochs": 1}, "seed": 42}) == {"sft.lr": 1e-4}


def test_the_artifact_is_registered_and_fetched_from_the_remote(tiny_run, tmp_path):
    """As the README says: push, tag a version (GTO, which DVC's model registry reads), get it elsewhere."""
    team = clone_with_cache(tiny_run, "artifact-source")
    ok(sh("dvc", "push", "models/export", cwd=team))
    ok(sh("gto", "register", "meddialog", "--version", "v0.1.0", cwd=team))
    assert "meddialog" in ok(sh("gto", "show", cwd=team)).stdout
    out = tmp_path / "fetched"
    ok(sh("dvc", "artifacts", "get", str(team), "meddialog", "-o", str(out), cwd=tmp_path))
    assert (out / "model.safetensors").read_bytes() == (team / "models/export/model.safetensors").read_bytes()
    assert {"README.md", "generation_config.json", "tokenizer.json", "lineage.json"} <= {p.name for p in out.iterdir()}


def test_gguf_round_trip_f32_is_exact(tiny_run):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, export = tiny_run / "models" / "gguf", tiny_run / "models" / "export"
    assert {"export-f32.gguf", "export-q8_0.gguf", "Modelfile", "README.md"} <= {p.name for p in gguf_dir.iterdir()}
    fields = GGUFReader(str(gguf_dir / "export-f32.gguf")).fields
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="export-f32.gguf", dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(export).state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.state_dict().items())
    summary = json.loads((tiny_run / "metrics" / "gguf.json").read_text())
    assert summary["f32.identical"] == summary["f32.compared"] == 4
    assert 0 <= summary["q8_0.identical"] <= summary["q8_0.compared"] == 4
    modelfile = (gguf_dir / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./export-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_untrained_adapter_is_refused_before_exporting(tiny_project):
    models = tiny_project / "models"
    make_adapter(models / "base", models / "sft")  # PEFT's lora_B starts at zero: an exact no-op
    make_adapter(models / "base", models / "grpo", parents=(Path("models/sft"),), lora_b_scale=0.05)
    result = run_stage("export", tiny_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: models/sft: every lora_B weight is zero (an untrained adapter): "
        "merging it would export the model below it unchanged")
    assert not (models / "export").exists()


def test_export_without_a_trained_model_is_one_line(tiny_project):
    result = run_stage("export", tiny_project)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: models/grpo not found: the grpo stage has not produced it (`dvc repro grpo`)")


def test_gguf_without_the_converter_is_one_line(tiny_project, tmp_path):
    write_params(tiny_project)
    (tiny_project / "models" / "export").mkdir()
    (tiny_project / "models" / "export" / "config.json").write_text("{}")
    result = run_stage("gguf", tiny_project, env={"MEDDIALOG_GGUF_CONVERTER": str(tmp_path / "missing.py")})
    assert result.returncode == 1
    assert "GGUF converter is not installed" in result.stderr.strip().splitlines()[-1]
    assert "make setup" in result.stderr


def test_export_params_are_checked(tiny_project):
    from conftest import set_params

    set_params(tiny_project, **{"export.gguf_types": ["f32", "q4_k"]})
    result = run_stage("export", tiny_project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: export.gguf_types[1]: must be one of")


def test_embedded_export_stops_at_the_end_of_the_turn_with_plain_generate(project, embedded_base_dir):
    """The export's generation_config alone makes plain `model.generate` stop where the pipeline's
    generation stops: the same answers, some of them ending well before the length limit."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meddialog.modeling.generation import generate
    from meddialog.modeling.loading import load_model
    from meddialog.params import load_params

    write_params(project, **{"export.model": "base", "generation.max_new_tokens": 40})
    shutil.copytree(embedded_base_dir, project / "models" / "base")
    for stage in ("download", "process"):
        assert run_stage(stage, project).returncode == 0
    from meddialog.export.model import write_export

    cwd = os.getcwd()
    os.chdir(project)
    try:
        params = load_params()
        write_export(params, project / "models" / "export")
    finally:
        os.chdir(cwd)
    system = {"role": "system", "content": "You are a medical assistant."}
    prompts = [[system, {"role": "user", "content": q}] for q in (
        "Answer with one word, yes or no: is the heart a muscle?",
        "Reply with only the number: how many chambers does the human heart have?",
        "Explain in detail how the kidneys filter blood.")]
    model, tokenizer = load_model(project / "models" / "base", params.model)
    expected = generate(model, tokenizer, prompts, params.generation, progress=False)
    export = project / "models" / "export"
    plain, plain_tokenizer = AutoModelForCausalLM.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    lengths = []
    for prompt, answer in zip(prompts, expected):
        inputs = plain_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        output = plain.generate(**inputs)[0, inputs["input_ids"].shape[1]:]
        lengths.append(len(output))
        assert plain_tokenizer.decode(output, skip_special_tokens=True).strip() == answer
    assert min(lengths) < 20 and max(lengths) == 40, lengths  # stopped at the end of the turn, or at the limit


def test_bfloat16_export_without_gguf(tiny_run):
    lab = clone_with_cache(tiny_run, "bf16-no-gguf")
    ok(sh("dvc", "exp", "run", "-S", "export.dtype=bfloat16", "-S", "export.gguf_types=[]", cwd=lab))
    config = json.loads((lab / "models" / "export" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    summary = json.loads((lab / "metrics" / "export.json").read_text())
    assert summary["parity_expected"] == 0 and summary["parity_compared"] == 4  # compared, not expected identical
    assert [p.name for p in (lab / "models" / "gguf").iterdir()] == ["README.md"]
    assert json.loads((lab / "metrics" / "gguf.json").read_text()) == {"files": 0}
    ok(sh("python", "-m", "tools.check_metrics", cwd=lab))
