"""verl's Parquet inputs, written by the process stage beside the JSON Lines splits.

* SFT (`verl.trainer.sft_trainer`, `data.messages_key=messages`): one `messages` column.
* RL (`verl.trainer.main_ppo`): verl's RLHF schema: `data_source`, `prompt` (chat messages
  without the final answer), `ability`, `reward_model{style, ground_truth}` and
  `extra_info{index, split, source, question}`. `question` is the patient's last message, so
  reward functions under verl can read the patient's words (meddialog.verl.reward.compute_score).
"""
from __future__ import annotations

from pathlib import Path

from meddialog.data.conversations import question_of

ABILITY = "medical_dialogue"


def write_verl_parquet(splits: dict[str, list[dict]], out_dir: Path) -> None:
    """`splits` maps train/val/test to records from every source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        records = splits[split]
        sft = pa.Table.from_pylist([{"id": r["id"], "messages": r["messages"]} for r in records])
        pq.write_table(sft, out_dir / f"sft_{split}.parquet")
        rl = pa.Table.from_pylist([rl_row(r, split, index) for index, r in enumerate(records)])
        pq.write_table(rl, out_dir / f"rl_{split}.parquet")


def rl_row(record: dict, split: str, index: int) -> dict:
    messages = record["messages"]
    return {
        "data_source": record["source"],
        "prompt": messages[:-1],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": messages[-1]["content"]},
        "extra_info": {"index": index, "split": split, "source": record["source"],
                       "question": question_of(messages)},
    }
