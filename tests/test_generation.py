import dataclasses

from stages.generation import generate, prompt_messages
from stages.modeling import load_model
from stages.params import GenerationParams, ModelParams

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


def test_batched_greedy_equals_one_at_a_time(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    params = GenerationParams(max_new_tokens=12, batch_size=4)
    batched = generate(model, tokenizer, PROMPTS, params, progress=False)
    single = generate(model, tokenizer, PROMPTS, dataclasses.replace(params, batch_size=1), progress=False)
    assert batched == single
    assert len(batched) == len(PROMPTS) and any(batched)


def test_answers_come_back_in_prompt_order(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, MODEL)
    params = GenerationParams(max_new_tokens=8, batch_size=3)
    forward = generate(model, tokenizer, PROMPTS, params, progress=False)
    backward = generate(model, tokenizer, PROMPTS[::-1], params, progress=False)
    assert forward == backward[::-1]
