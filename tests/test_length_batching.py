"""LengthWindowSampler: batches of similar length, the same examples as random batches, wired into SFT."""
import random

import pytest

from meddialog.training.length_batching import LengthWindowSampler
from tests.test_sft import TWO_TURNS


def padding_share(lengths, order, batch_size):
    """Fraction of padded batch tokens that are padding, batching `order` as the DataLoader does."""
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        real += sum(batch)
        padded += max(batch) * len(batch)
    return 1 - real / padded


@pytest.fixture
def lengths():
    """Lengths shaped like the training data here: many short examples, a fifth cut at max_length."""
    rng = random.Random(0)
    return [min(256, int(rng.lognormvariate(4.9, 0.6))) for _ in range(1003)]  # 1003: a short last window


def test_every_example_once_per_epoch(lengths):
    order = list(LengthWindowSampler(lengths, batch_size=4, window_batches=8, seed=42))
    assert sorted(order) == list(range(len(lengths)))


def test_windows_hold_the_same_examples_as_random_batches(lengths):
    """window_batches=1 is a random order (sorting inside one batch changes no batch's content), and
    wider windows only reorder within each window: a short run trains on the same examples."""
    random_order = list(LengthWindowSampler(lengths, 4, 1, seed=42))
    windowed = list(LengthWindowSampler(lengths, 4, 8, seed=42))
    assert random_order != windowed
    for start in range(0, len(lengths), 32):
        assert set(windowed[start:start + 32]) == set(random_order[start:start + 32])


def test_batches_are_of_similar_length_but_not_longest_first(lengths):
    random_order = list(LengthWindowSampler(lengths, 4, 1, seed=42))
    windowed = list(LengthWindowSampler(lengths, 4, 8, seed=42))
    assert padding_share(lengths, random_order, 4) > 0.2
    assert padding_share(lengths, windowed, 4) < padding_share(lengths, random_order, 4) / 4
    # the batches of a window are shuffled: the window's first batch is not always its longest
    firsts_longest = [max(lengths[i] for i in windowed[s:s + 4]) == max(lengths[i] for i in windowed[s:s + 32])
                      for s in range(0, 992, 32)]
    assert not all(firsts_longest)


def test_order_is_seeded_and_changes_with_the_epoch(lengths):
    sampler = LengthWindowSampler(lengths, 4, 8, seed=42)
    first = list(sampler)
    assert list(LengthWindowSampler(lengths, 4, 8, seed=42)) == first
    assert list(LengthWindowSampler(lengths, 4, 8, seed=43)) != first
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize("batch_size, window_batches", [(0, 8), (4, 0)])
def test_rejects_empty_batches_or_windows(batch_size, window_batches):
    with pytest.raises(ValueError, match="must be >= 1"):
        LengthWindowSampler([3, 4], batch_size, window_batches, seed=0)


def test_sft_trainer_batches_follow_the_sampler(tiny_model_dir, tmp_path):
    """The real SFTTrainer's training DataLoader yields the sampler's batches, padded to their longest."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from meddialog.training.chat_data import tokenize_conversation
    from stages.sft import make_trainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rng = random.Random(1)
    examples = [tokenize_conversation(tokenizer, [*TWO_TURNS[:2], {"role": "assistant",
                                                                   "content": "word " * rng.randint(1, 60)}], 256)
                for _ in range(24)]
    trainer = make_trainer(
        3, model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(output_dir=str(tmp_path), report_to="none", max_length=256, per_device_train_batch_size=4,
                       seed=42, bf16=False),
        train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    lengths = [len(e["input_ids"]) for e in examples]
    expected = list(LengthWindowSampler(lengths, 4, 3, seed=42))
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 6
    for number, batch in enumerate(batches):
        rows = expected[number * 4:number * 4 + 4]
        assert batch["input_ids"].shape[1] == max(lengths[i] for i in rows)
        assert sorted(batch["attention_mask"].sum(dim=1).tolist()) == sorted(lengths[i] for i in rows)
