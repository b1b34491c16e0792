"""Our `compute_score` (meddialog/verl/reward.py) inside verl's reward loop, loaded the way our GRPO launch
configures it (reward.custom_reward_function), scoring a batch of tokenized responses."""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from meddialog.verl.launch import grpo_command
from meddialog.verl.reward import compute_score


def test_compute_score_runs_in_verls_reward_loop_on_a_batch(params, verl_project, tokenizer, compose):
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    # models/base is the tiny model, with the embedded tokenizer that decodes the responses.
    config = compose(grpo_command(params, verl_project, Path("models/base"), Path("models/verl/checkpoints/run")).argv)
    worker = RewardLoopWorker(config)  # verl's own worker: loads the tokenizer and our function from the config

    rows = pd.read_parquet(config.data.train_files).head(3).to_dict("records")
    reference = rows[0]["reward_model"]["ground_truth"]
    responses = [reference, "Patient: yes yes yes yes yes yes yes yes", "Please see a doctor in person soon."]
    batch = tokenized_batch(tokenizer, rows, responses)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(batch))

    for row, response, output in zip(rows, responses, outputs):
        expected = compute_score(row["data_source"], response, row["reward_model"]["ground_truth"],
                                 dict(row["extra_info"]))
        assert output["reward_score"] == expected["score"]
        assert {k: output["reward_extra_info"][k] for k in expected} == expected  # every component, logged by verl
    assert outputs[0]["reward_score"] > outputs[1]["reward_score"]  # the reference beats a looping, leaked reply

    scores = worker.reward_manager.assemble_rm_scores(batch, [o["reward_score"] for o in outputs])
    ends = batch.batch["attention_mask"][:, batch.batch["prompts"].shape[1]:].sum(dim=1) - 1
    assert torch.equal(scores.nonzero()[:, 1], ends)  # one reward per response, on its last token


def tokenized_batch(tokenizer, rows: list[dict], responses: list[str]):
    """A DataProto shaped like a rollout's output: left-padded prompts, right-padded responses."""
    from verl import DataProto

    prompts = [tokenizer.apply_chat_template(list(r["prompt"]), add_generation_prompt=True, tokenize=True,
                                             return_dict=False) for r in rows]
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in responses]
    width_p, width_r = max(map(len, prompts)), max(map(len, answers))
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts])
    response_ids = torch.tensor([a + [pad] * (width_r - len(a)) for a in answers])
    mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) + [1] * len(a) + [0] * (width_r - len(a))
                         for p, a in zip(prompts, answers)])
    return DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": mask,
                 "input_ids": torch.cat([prompt_ids, response_ids], dim=1)},
        non_tensors={"data_source": np.array([r["data_source"] for r in rows], dtype=object),
                     "reward_model": np.array([dict(r["reward_model"]) for r in rows], dtype=object),
                     "extra_info": np.array([dict(r["extra_info"]) for r in rows], dtype=object)},
    )


def test_verl_reads_the_reward_function_under_reward_not_the_legacy_top_level_key(params, verl_project, compose):
    """Why the launch sets `reward.custom_reward_function.path`: main_ppo in verl 0.9.1 never migrates
    the older top-level `custom_reward_function.path`, so a reward set there is silently ignored."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    argv = grpo_command(params, verl_project, Path("models/base"), Path("models/verl/checkpoints/run")).argv
    ours = get_custom_reward_fn(compose(argv))
    assert ours.args[0].__code__.co_filename == str(Path(__file__).resolve().parents[1] / "meddialog/verl/reward.py")
    legacy = [a.replace("reward.custom_reward_function.", "custom_reward_function.") for a in argv]
    assert get_custom_reward_fn(compose(legacy)) is None
