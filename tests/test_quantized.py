"""4-bit NF4 on CPU (bitsandbytes runs it here), the rule for stacking adapters, and the GPU recipe's
decisions that can be checked without a GPU: LoRA dtypes, stop ids, one process with several GPUs."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from meddialog.errors import UserError
from meddialog.params import ModelParams
from meddialog.training.launch import single_process_device
from meddialog.training.trainer import refuse_data_parallel
from tests.conftest import (
    make_adapter,
    mlflow_runs,
    read_jsonl,
    run_stage,
    write_params,
)

FULL = ModelParams(name="unused", load_in_4bit=False)
NF4 = ModelParams(name="unused", load_in_4bit=True)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def chain(tiny_4bit_model_dir, tmp_path_factory):
    """A tiny base and an SFT-like adapter that changes it (seeded random lora_B on every linear)."""
    work = tmp_path_factory.mktemp("chain")
    sft = make_adapter(tiny_4bit_model_dir, work / "sft", lora_b_scale=0.2, target_modules=ALL_LINEAR)
    return tiny_4bit_model_dir, sft, work


def test_4bit_loads_nf4_on_cpu_not_a_float32_fallback(tiny_4bit_model_dir):
    from bitsandbytes.nn import Linear4bit

    from meddialog.modeling.loading import load_model

    model, _ = load_model(tiny_4bit_model_dir, NF4)
    assert model.is_loaded_in_4bit and model.device.type == "cpu"
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)
    full, _ = load_model(tiny_4bit_model_dir, ModelParams(name="unused"))  # auto: float32 on CPU
    assert not getattr(full, "is_loaded_in_4bit", False) and full.dtype == torch.float32


@pytest.mark.slow
def test_chain_rule_keeps_the_adapter_under_4bit_and_merging_into_nf4_loses_it(chain, monkeypatch):
    """The model GRPO starts from (and evaluation scores) is the SFT model up to the quantization error;
    the old way, merging the adapter into NF4 weights, is measurably further away. Measured by
    meddialog.evaluation.retention, the same code as the KL table in docs/performance.md and the GPU check."""
    from meddialog.evaluation.retention import retention

    base, sft, work = chain
    monkeypatch.chdir(work)  # scratch/merged/ is made here
    dialogue = {"messages": [
        {"role": "user", "content": "I have had a headache and a fever for two days. What should I do?"},
        {"role": "assistant", "content": "Rest, drink fluids and see a doctor if the fever lasts or gets worse."}]}
    figures = retention(sft, [dialogue], FULL)
    quantization_error = figures["quantization_only"]
    bound = 1.25 * quantization_error
    assert figures["bare_4bit_base"] > 2 * quantization_error  # the adapter matters: without it the model is far away
    assert figures["grpo_start"] < bound and figures["chain_rule"] < bound, figures
    assert figures["merge_into_4bit"] > bound, figures
    # the full-precision merge was made once, in its own process, and is reused
    (merged,) = [p for p in (work / "scratch" / "merged").iterdir() if p.is_dir()]
    assert (merged / "merge.json").is_file() and (merged / "model.safetensors").is_file()


def test_evaluation_follows_the_precision_the_adapter_was_trained_in(chain, tmp_path, monkeypatch):
    from meddialog.modeling.loading import chain_precision, trained_in_4bit

    base, _, _ = chain
    auto = ModelParams(name="unused")  # on this CPU: float32
    monkeypatch.chdir(tmp_path)
    trained = make_adapter(base, tmp_path / "q", precision={"device": "cpu", "dtype": "float32", "load_in_4bit": True})
    assert trained_in_4bit(trained) is True
    assert chain_precision(auto, (trained,)).load_in_4bit  # auto: the precision it was trained in
    assert not chain_precision(FULL, (trained,)).load_in_4bit  # an explicit choice is obeyed
    assert not chain_precision(auto, (trained,), for_training=True).load_in_4bit  # training: params decide
    unrecorded = make_adapter(base, tmp_path / "old")
    assert trained_in_4bit(unrecorded) is None and not chain_precision(auto, (unrecorded,)).load_in_4bit


def qlora_trainer(model_dir: Path, out: Path, lr: float = 1e-5, steps: int = 3):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from meddialog.modeling.loading import load_model
    from meddialog.params import LoraParams
    from meddialog.training.trainer import lora_config

    model, tokenizer = load_model(model_dir, NF4)
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(8)]
    config = SFTConfig(output_dir=str(out), report_to="none", max_steps=steps, learning_rate=lr, bf16=False,
                       per_device_train_batch_size=2, lr_scheduler_type="constant", save_strategy="no", seed=0)
    return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                      peft_config=lora_config(LoraParams(r=2, alpha=4, target_modules=["q_proj", "v_proj"])))


def share_of_lora_a_moved(trainer) -> float:
    """Train, and return the share of lora_A entries that changed (lora_B starts at 0, so the first
    step moves only B; A's updates start at the second)."""
    before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = sum(int((after[n].detach().float() != w).sum()) for n, w in before.items())
    return moved / sum(w.numel() for w in before.values())


def test_trl_casts_qlora_weights_to_bf16_and_they_are_cast_back_to_float32(tiny_4bit_model_dir, tmp_path):
    """At lr 1e-5 an Adam update (~1e-5) is far below half a bf16 step of a lora_A entry (~2e-4 at 0.07):
    in TRL's bf16 almost no lora_A entry moves; cast back to float32, they all do."""
    from meddialog.training.trainer import keep_lora_float32

    as_trl_leaves_it = qlora_trainer(tiny_4bit_model_dir, tmp_path / "bf16")
    assert {p.dtype for p in as_trl_leaves_it.model.parameters() if p.requires_grad} == {torch.bfloat16}
    rounded_away = share_of_lora_a_moved(as_trl_leaves_it)

    trainer = qlora_trainer(tiny_4bit_model_dir, tmp_path / "fp32")
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert keep_lora_float32(trainer) == len(trainable)
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    kept = share_of_lora_a_moved(trainer)  # QLoRA steps on CPU: backward through NF4 into float32 LoRA
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    assert kept > 0.9 and rounded_away < 0.2, (kept, rounded_away)


def test_stop_ids_include_every_generation_config_eos(tiny_4bit_model_dir):
    """A two-id eos_token_id (Qwen2.5: <|im_end|> and <|endoftext|>): generation stops at either."""
    from transformers import GenerationConfig

    from meddialog.modeling.generation import generate, stop_token_ids
    from meddialog.modeling.loading import load_model
    from meddialog.params import GenerationParams

    model, tokenizer = load_model(tiny_4bit_model_dir, FULL)
    prompt = [[{"role": "user", "content": "What helps a sore throat?"}]]
    params = GenerationParams(max_new_tokens=12, batch_size=1)
    model.generation_config.eos_token_id = None
    free = tokenizer(generate(model, tokenizer, prompt, params, progress=False)[0], add_special_tokens=False)["input_ids"]
    assert len(free) >= 4
    stop_at = free[3]
    ids = stop_token_ids(tokenizer, GenerationConfig(eos_token_id=[tokenizer.eos_token_id, stop_at]))
    assert tokenizer.eos_token_id in ids and stop_at in ids
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop_at]
    stopped = generate(model, tokenizer, prompt, params, progress=False)[0]
    assert tokenizer(stopped, add_special_tokens=False)["input_ids"] == free[:3]


@pytest.mark.parametrize(("visible", "gpus", "pinned"), [
    (None, 0, None), (None, 1, None), ("3", 1, None),
    (None, 2, "0"), ("2,3", 2, "2"), (" 5 , 7", 2, "5"), ("GPU-aaaa,GPU-bbbb", 2, "GPU-aaaa")])
def test_one_process_with_several_gpus_is_pinned_to_the_first_visible(visible, gpus, pinned):
    assert single_process_device(visible, gpus) == pinned


def test_a_stage_started_by_hand_on_several_gpus_stops_with_one_line():
    refuse_data_parallel(SimpleNamespace(n_gpu=1))
    with pytest.raises(UserError, match="train.launcher: torchrun"):
        refuse_data_parallel(SimpleNamespace(n_gpu=4))


def test_4bit_true_without_bitsandbytes_is_one_line(monkeypatch):
    import importlib.util

    from meddialog.modeling.precision import resolve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError, match="bitsandbytes is not installed"):
        resolve(NF4)
    assert not resolve(ModelParams(name="unused")).load_in_4bit  # auto never needs it on CPU


@pytest.mark.slow
def test_whole_chain_in_4bit_on_cpu(tiny_project, tiny_4bit_model_dir, monkeypatch):
    """sft → grpo → eval with model.load_in_4bit: true: NF4 on CPU throughout, float32 adapters,
    lineage and provenance saying so, and eval scoring the trained models in 4-bit."""
    import shutil

    from safetensors import safe_open

    monkeypatch.chdir(tiny_project)
    shutil.rmtree("models/base")
    shutil.copytree(tiny_4bit_model_dir, "models/base")
    write_params(tiny_project, **{
        "model.load_in_4bit": True, "lora.r": 2, "lora.alpha": 4, "sft.max_steps": 2, "sft.batch_size": 2,
        "sft.max_samples": 8, "sft.eval_samples": 2, "sft.eval_steps": 2, "sft.save_steps": 2, "sft.max_length": 128,
        "sft.scheduler": "constant", "sft.warmup_ratio": 0.0, "grpo.max_steps": 2, "grpo.batch_size": 2,
        "grpo.num_generations": 2, "grpo.max_completion_length": 4, "grpo.save_steps": 2,
        "baseline.num_samples": 4, "eval.num_samples": 4, "generation.max_new_tokens": 4})
    for stage in ("baseline", "sft", "grpo", "eval"):
        result = run_stage(stage, tiny_project)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
    for adapter in ("sft", "grpo"):
        lineage = json.loads((Path("models") / adapter / "lineage.json").read_text())
        assert lineage["precision"] == {"device": "cpu", "dtype": "float32", "load_in_4bit": True}
        with safe_open(f"models/{adapter}/adapter_model.safetensors", "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}, adapter
    for name in ("baseline", "sft", "grpo", "sft_train", "grpo_train"):
        record = json.loads((Path("metrics/provenance") / f"{name}.json").read_text())
        assert record["device"] == "cpu" and record["dtype"] == "float32", name
        assert record["quantization"].startswith("bitsandbytes nf4"), name
        assert set(record["versions"]) >= {"torch", "transformers", "trl", "peft", "bitsandbytes"}, name
    # provenance is a separate file: the metrics files DVC diffs hold numbers only
    for name in ("baseline", "sft", "grpo"):
        assert all(isinstance(v, (int, float)) for v in json.loads(Path(f"metrics/{name}.json").read_text()).values())
    assert len(read_jsonl(Path("metrics/grpo_predictions.jsonl"))) == 4
    tags = [run.data.tags for run in mlflow_runs(tiny_project)]
    assert tags and all(t.get("provenance.quantization", "").startswith("bitsandbytes nf4") for t in tags)


def lora_gradients(model, tokenizer, eval_forward_first: bool) -> torch.Tensor:
    """The LoRA gradients of one training step, after an evaluation-style forward if asked."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=list(ALL_LINEAR)))
    for name, weight in peft_model.named_parameters():
        if "lora_B" in name:
            weight.data = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 0.1
    ids = tokenizer("A patient has had a headache and a fever for two days.", return_tensors="pt")["input_ids"]
    if eval_forward_first:  # what the trainer's evaluation (or a GRPO rollout) does before a step
        peft_model.eval()
        with torch.no_grad():
            peft_model(ids)
    peft_model.train()
    peft_model(ids, labels=ids).loss.backward()
    return torch.cat([p.grad.flatten() for n, p in peft_model.named_parameters() if p.grad is not None])


def test_an_evaluation_before_training_leaves_4bit_gradients_right_on_cpu(tiny_4bit_model_dir):
    from meddialog.modeling.loading import load_model

    def grads(for_training: bool, eval_forward_first: bool):
        model, tokenizer = load_model(tiny_4bit_model_dir, NF4, for_training=for_training)
        return lora_gradients(model, tokenizer, eval_forward_first)

    clean = grads(for_training=True, eval_forward_first=False)
    assert torch.allclose(grads(for_training=True, eval_forward_first=True), clean)
    model, _ = load_model(tiny_4bit_model_dir, NF4)
    if not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules()):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    broken = grads(for_training=False, eval_forward_first=True)  # bitsandbytes' repacking left on
    assert not torch.allclose(broken, clean, atol=1e-3), "bitsandbytes no longer corrupts gradients: drop the fix"
