"""The process stage's parquet files through verl's own dataset classes, configured as our launch
configures them (configs/verl/*.yaml + the stage's overrides), with the embedded tokenizer."""
from pathlib import Path

import pandas as pd

from meddialog.verl.launch import grpo_command, sft_command

RUN_DIR = Path("models/verl/checkpoints/run")


def test_rl_parquet_loads_in_rlhf_dataset_and_overlong_prompts_are_filtered(params, verl_project, tokenizer,
                                                                            compose):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = compose(grpo_command(params, verl_project, Path("models/base"), RUN_DIR).argv).data
    rows = pd.read_parquet(config.train_files).to_dict("records")
    lengths = [len(tokenizer.apply_chat_template(list(r["prompt"]), add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)) for r in rows]
    config.max_prompt_length = sorted(lengths)[len(lengths) // 2]  # about half the prompts are too long
    dataset = RLHFDataset(data_files=config.train_files, tokenizer=tokenizer, config=config)

    kept = [r for r, n in zip(rows, lengths) if n <= config.max_prompt_length]
    assert 0 < len(dataset) == len(kept) < len(rows)
    item = dataset[0]
    assert item["raw_prompt"] == [dict(m) for m in kept[0]["prompt"]]
    assert item["raw_prompt"][-1]["role"] == "user"
    assert item["reward_model"]["ground_truth"] == kept[0]["reward_model"]["ground_truth"]
    assert item["extra_info"]["question"] == kept[0]["extra_info"]["question"]
    assert item["data_source"] in params.data.sources


def test_sft_parquet_loads_in_multiturn_sft_dataset_with_loss_only_on_assistant_text(params, verl_project, tokenizer,
                                                                                    compose):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    config = compose(sft_command(params, verl_project, Path("models/base"), RUN_DIR).argv).data
    dataset = MultiTurnSFTDataset(parquet_files=config.train_files, tokenizer=tokenizer, config=config)
    dialogues = [i for i, messages in enumerate(dataset.messages)
                 if sum(m["role"] == "assistant" for m in messages) >= 2][:3]
    assert dialogues, "the sample has multi-turn dialogues"
    for index in [0, *dialogues]:
        item = dataset[index]  # verl checks here that per-turn tokens equal the whole dialogue's
        answers = [m["content"] for m in dataset.messages[index] if m["role"] == "assistant"]
        spans = loss_spans(item["input_ids"].tolist(), item["loss_mask"].tolist())
        # Each assistant turn, and its end-of-turn marker: what the model must learn to produce.
        assert [tokenizer.decode(span) for span in spans] == [f"{a}<|im_end|>\n" for a in answers]
        assert len(item["input_ids"]) <= config.max_length


def test_dialogues_longer_than_max_length_are_cut_not_fatal(params, verl_project, tokenizer, compose):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    config = compose(sft_command(params, verl_project, Path("models/base"), RUN_DIR).argv).data
    config.max_length = 64  # shorter than any dialogue of the sample (the system prompt alone is ~50 tokens)
    dataset = MultiTurnSFTDataset(parquet_files=config.train_files, tokenizer=tokenizer, config=config)
    assert all(len(dataset[i]["input_ids"]) == 64 for i in range(5))


def loss_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans, current = [], []
    for token, on in zip(ids, mask):
        if on:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])
