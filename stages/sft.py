"""Stage 4 (tutorial step 4): supervised fine-tuning with TRL's SFTTrainer and a LoRA adapter.

    python -m stages.sft                                  # one process; `dvc repro sft` runs it via meddialog.training.launch
    dvc exp run -S sft.lr=1e-4 -S sft.epochs=2           # an experiment
    dvc exp run -S model.name=Qwen/Qwen2.5-3B-Instruct -S sft.epochs=3 -S sft.batch_size=4 \\
        -S sft.max_steps=-1 -S sft.max_samples=0         # the tutorial's GPU recipe (4-bit QLoRA on CUDA)

Trains on data/processed/<source>/train.jsonl for `sft.sources`, validates on their val split,
with the loss on every assistant turn only (meddialog/training/chat_data.py), in batches of similar length
(meddialog/training/length_batching.py). LoRA on float32 on CPU; on CUDA bfloat16, and 4-bit QLoRA when
`model.load_in_4bit` is auto/true (`true`: on CPU too; meddialog/modeling/precision.py). The LoRA weights stay
float32 either way (meddialog.training.trainer.keep_lora_float32). Writes models/sft (adapter + tokenizer + lineage.json),
metrics/sft_history.csv (plot) and metrics/sft_train.json. This file is the recipe (data, model, TRL
config, trainer); meddialog/training/run.py runs it as it runs grpo's: run key, resume, MLflow, outputs.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from meddialog import cli
from meddialog.params import load_params
from meddialog.paths import BASE_DIR, SFT_DIR

if TYPE_CHECKING:
    from meddialog.training.run import Trained

log = logging.getLogger("sft")

HISTORY_COLUMNS = ("step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm")


def build_dataset(tokenizer, records: list[dict], max_length: int):
    """Tokenised examples with assistant masks; drops (and counts) any left with no assistant token."""
    from datasets import Dataset

    from meddialog.training.chat_data import tokenize_conversation

    rows = [tokenize_conversation(tokenizer, r["messages"], max_length) for r in records]
    kept = [r for r in rows if any(r["assistant_masks"])]
    if len(kept) < len(rows):
        log.warning("%d of %d examples have no assistant token within sft.max_length=%d and are skipped",
                    len(rows) - len(kept), len(rows), max_length)
    return Dataset.from_list(kept)


def make_trainer(length_window: int, **trainer_args):
    """An SFTTrainer whose training batches come from LengthWindowSampler, seeded by the trainer's
    seed (unless packing, where every row is already full)."""
    from trl import SFTTrainer

    from meddialog.training.length_batching import LengthWindowSampler

    class LengthWindowSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if self.args.packing:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return LengthWindowSampler(lengths, self.args.train_batch_size, length_window, self.args.seed)

    return LengthWindowSFTTrainer(**trainer_args)


def main() -> None:
    params = load_params()
    sft = params.sft

    from transformers import set_seed
    from trl import SFTConfig

    from meddialog.data.dataset import read_split
    from meddialog.data.subsets import seeded_sample
    from meddialog.modeling.loading import load_model
    from meddialog.modeling.precision import resolve
    from meddialog.training.run import TrainingRun
    from meddialog.training.trainer import lora_config

    # ------------------------------------------------------------------ seed, data
    precision = resolve(params.model)  # 4-bit asked for without bitsandbytes stops here, before any loading
    set_seed(params.seed)
    train_records = read_split(sft.sources, "train")
    if sft.max_samples:
        train_records = seeded_sample(train_records, sft.max_samples, params.seed)
    val_records = read_split(sft.sources, "val")
    val_records = seeded_sample(val_records, sft.eval_samples, params.seed)
    run = TrainingRun("sft", params, sft, precision, key_inputs=(train_records, val_records))

    # ------------------------------------------------------------------ trainer arguments (before the model)
    config = run.configure(
        SFTConfig,
        num_train_epochs=sft.epochs,
        max_steps=sft.max_steps,
        per_device_train_batch_size=sft.batch_size,
        per_device_eval_batch_size=sft.batch_size,
        gradient_accumulation_steps=sft.grad_accum,
        learning_rate=sft.lr,
        lr_scheduler_type=sft.scheduler,
        warmup_steps=sft.warmup_ratio,  # a float below 1 is a ratio of the total steps
        max_length=sft.max_length,
        packing=sft.packing,
        gradient_checkpointing=sft.gradient_checkpointing,
        eval_strategy="steps",
        eval_steps=sft.eval_steps,
        dataloader_num_workers=0,
    )

    # ------------------------------------------------------------------ tokenizer, model
    model, tokenizer = load_model(BASE_DIR, params.model, for_training=True)
    train_set = build_dataset(tokenizer, train_records, sft.max_length)
    val_set = build_dataset(tokenizer, val_records, sft.max_length)

    # ------------------------------------------------------------------ train, save
    summary = run.train(
        lambda callbacks: make_trainer(sft.length_window, model=model, args=config, train_dataset=train_set,
                                       eval_dataset=val_set, processing_class=tokenizer,
                                       peft_config=lora_config(params.lora), callbacks=callbacks),
        announcement=f"training on {len(train_set)} examples ({len(val_set)} validation), effective batch "
                     f"{run.effective_batch_size} ({config.world_size} process(es)), {precision.describe()}",
        mlflow_params={"train_examples": len(train_set), "val_examples": len(val_set)},
        adapter_dir=SFT_DIR, lineage={"train_examples": len(train_set)},
        evaluate=True, summarize=loss_and_tokens, history_columns=HISTORY_COLUMNS)
    if summary is not None:
        log.info("eval loss %.4f -> %.4f in %d steps (%.0f s, %.0f tokens/s); adapter in %s", summary["eval_loss_start"],
                 summary["eval_loss"], summary["steps"], summary["train_runtime_s"], summary["tokens_per_s"], SFT_DIR)


def loss_and_tokens(done: Trained) -> dict[str, float]:
    """The summary's SFT values: loss, epochs and tokens, the rate over this run's tokens only.

    TRL's num_tokens counts real tokens (of all processes); the Trainer's num_input_tokens_seen
    includes padding. A resumed run's history holds the steps before the kill too, but TRL's count
    restarts at 0 in the resumed process (trl 1.16 does not checkpoint it): the run's tokens are those
    logged before the resume plus this process's. The kill suite (tools/kill_suite.py) checks that a
    resumed run's summary equals an uninterrupted run's.
    """
    from meddialog.training.run import mean_train_loss

    history = done.trainer.state.log_history
    tokens_before = _real_tokens(e for e in history if e.get("step", 0) <= done.resumed_at)
    tokens_here = _real_tokens(e for e in history if e.get("step", 0) > done.resumed_at)
    return {"train_loss": mean_train_loss(history), "epochs": done.trainer.state.epoch or 0.0,
            "tokens_seen": tokens_before + tokens_here, "tokens_per_s": tokens_here / done.runtime_s}


def _real_tokens(log_history) -> float:
    return max((e["num_tokens"] for e in log_history if "num_tokens" in e), default=0)


if __name__ == "__main__":
    cli.run(main)
