"""Stage 4 (tutorial step 4): supervised fine-tuning with TRL's SFTTrainer and a LoRA adapter.

    python -m stages.sft                                  # one process; `dvc repro sft` runs it via meddialog.training.launch
    dvc exp run -S sft.lr=1e-4 -S sft.epochs=2           # an experiment
    dvc exp run -S model.name=Qwen/Qwen2.5-3B-Instruct -S sft.epochs=3 -S sft.batch_size=4 \\
        -S sft.max_steps=-1 -S sft.max_samples=0         # the tutorial's GPU recipe (4-bit QLoRA on CUDA)

Trains on data/processed/<source>/train.jsonl for `sft.sources`, validates on their val split,
with the loss on every assistant turn only (meddialog/training/chat_data.py), in batches of similar length
(meddialog/training/length_batching.py). LoRA on float32 on CPU; on CUDA bfloat16, and 4-bit QLoRA when
`model.load_in_4bit` is auto/true (`true`: on CPU too; meddialog/modeling/precision.py). The LoRA weights stay
float32 either way (training.keep_lora_float32). Writes models/sft (adapter + tokenizer + lineage.json),
metrics/sft_history.csv (plot) and metrics/sft_train.json.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from meddialog import cli
from meddialog.params import load_params
from meddialog.paths import BASE_DIR, SFT_DIR

log = logging.getLogger("sft")

HISTORY_FILE = Path("metrics/sft_history.csv")
SUMMARY_FILE = Path("metrics/sft_train.json")
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

    # ------------------------------------------------------------------ seed, data
    from transformers import set_seed
    from trl import SFTConfig

    from meddialog.data.dataset import read_split
    from meddialog.digests import fingerprint
    from meddialog.modeling.loading import load_model
    from meddialog.modeling.precision import (
        as_record,
        provenance,
        resolve,
        write_provenance,
    )
    from meddialog.tracking import flatten, start_run
    from meddialog.training.trainer import (
        common_trainer_args,
        effective_batch_size,
        keep_lora_float32,
        last_checkpoint,
        lora_change_callback,
        lora_config,
        mlflow_callback,
        peak_memory_gb,
        refuse_data_parallel,
        save_adapter,
        steps_done,
        write_history,
        write_json,
    )

    precision = resolve(params.model)  # 4-bit asked for without bitsandbytes stops here, before any loading
    set_seed(params.seed)
    train_records = read_split(sft.sources, "train")
    if sft.max_samples:
        train_records = random.Random(params.seed).sample(train_records, min(sft.max_samples, len(train_records)))
    val_records = read_split(sft.sources, "val")
    val_records = random.Random(params.seed).sample(val_records, min(sft.eval_samples, len(val_records)))

    # A checkpoint is resumed only by the same params, data and launch (ZeRO / FSDP checkpoints differ in form).
    run_key = fingerprint(params.seed, params.model, params.lora, sft, params.train, train_records, val_records)

    # ------------------------------------------------------------------ trainer arguments
    # Built before the model: under torchrun / accelerate this joins the process group and selects this
    # process's GPU, which load_model then places the model on (otherwise every process would use GPU 0).
    config = SFTConfig(
        **common_trainer_args("sft", run_key, params.seed, sft.save_steps, precision),
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
    lora = lora_config(params.lora)
    refuse_data_parallel(config)
    batch = effective_batch_size(config)

    # ------------------------------------------------------------------ tokenizer, model
    model, tokenizer = load_model(BASE_DIR, params.model, for_training=True)
    train_set = build_dataset(tokenizer, train_records, sft.max_length)
    val_set = build_dataset(tokenizer, val_records, sft.max_length)

    with start_run("sft", params.mlflow.experiment) as run:
        run.log_params({**flatten("", params), "train_examples": len(train_set), "val_examples": len(val_set),
                        "effective_batch_size": batch})
        tracker, lora_change = mlflow_callback(run), lora_change_callback()
        trainer = make_trainer(sft.length_window, model=model, args=config, train_dataset=train_set,
                               eval_dataset=val_set, processing_class=tokenizer, peft_config=lora,
                               callbacks=[tracker, lora_change])
        keep_lora_float32(trainer)
        log.info("training on %d examples (%d validation), effective batch %d (%d process(es)), %s",
                 len(train_set), len(val_set), batch, config.world_size, precision.describe())

        # -------------------------------------------------------------- train (resume)
        resume_from = last_checkpoint(Path(config.output_dir), sft.resume)
        resumed_at = steps_done(resume_from)
        eval_start = trainer.evaluate()["eval_loss"]  # the untrained adapter: step 0 of the eval curve
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume_from)
        runtime = time.perf_counter() - started
        eval_end = trainer.evaluate()["eval_loss"]

        # -------------------------------------------------------------- save (main process writes)
        save_adapter(trainer, SFT_DIR, BASE_DIR, (), stage="sft", run_key=run_key, train_examples=len(train_set),
                     precision=as_record(precision))
        if trainer.is_world_process_zero():
            # TRL's num_tokens counts real tokens (of all processes); the Trainer's num_input_tokens_seen
            # includes padding. A resumed run's history holds the earlier steps too: the rate is over this run's.
            tokens = _real_tokens(trainer.state.log_history)
            tokens_before = _real_tokens(e for e in trainer.state.log_history if e.get("step", 0) <= resumed_at)
            summary = {"train_loss": result.training_loss, "eval_loss": eval_end, "eval_loss_start": eval_start,
                       "steps": trainer.state.global_step, "resumed_from_step": resumed_at,
                       "epochs": trainer.state.epoch or 0.0, "tokens_seen": tokens, "train_runtime_s": runtime,
                       "tokens_per_s": (tokens - tokens_before) / runtime,
                       "effective_batch_size": batch, "processes": config.world_size,
                       "peak_memory_gb": peak_memory_gb(precision), **lora_change.result}
            # train() starts a fresh log history, so the pre-training eval is added back as step 0
            write_history(HISTORY_FILE, [{"step": 0, "epoch": 0.0, "eval_loss": eval_start}, *trainer.state.log_history],
                          HISTORY_COLUMNS)
            write_json(SUMMARY_FILE, summary)
            write_provenance("sft_train", provenance(precision, processes=config.world_size), run)
            run.log_metrics({f"final_{k}": v for k, v in summary.items()})
            if params.mlflow.log_models:
                run.log_artifacts(SFT_DIR, "adapter")
            log.info("eval loss %.4f -> %.4f in %d steps (%.0f s, %.0f tokens/s); adapter in %s",
                     eval_start, eval_end, summary["steps"], runtime, summary["tokens_per_s"], SFT_DIR)


def _real_tokens(log_history) -> float:
    return max((e["num_tokens"] for e in log_history if "num_tokens" in e), default=0)


if __name__ == "__main__":
    cli.run(main)
