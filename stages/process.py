"""Stage 2 (tutorial step 2): normalise, clean, de-duplicate and split every raw source.

    python -m stages.process

Writes data/processed/<source>/{train,val,test,train_small}.jsonl (records
`{"id", "source", "messages"}` with the configured system prompt first), verl Parquet files in
data/verl/, and metrics/data.json with records in / kept / dropped by reason / per split.
train_small.jsonl is the tutorial's GRPO subset: `data.grpo_subset_size` seeded train records.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from meddialog import atomic, cli
from meddialog.data.dataset import (
    SPLITS,
    SourceReport,
    drop_duplicates,
    parse_records,
    split_records,
)
from meddialog.data.subsets import seeded_subset
from meddialog.errors import UserError
from meddialog.params import load_params
from meddialog.paths import PROCESSED_DIR, RAW_DIR, VERL_DATA_DIR
from meddialog.verl.data import write_verl_parquet

log = logging.getLogger("process")

METRICS_FILE = Path("metrics/data.json")


def main() -> None:
    params = load_params()
    data = params.data
    for out in (PROCESSED_DIR, VERL_DATA_DIR):
        if out.exists():
            shutil.rmtree(out)
    totals = SourceReport()
    metrics: dict[str, int] = {}
    combined: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for source in data.sources:
        raw_file = RAW_DIR / f"{source}.jsonl"
        if not raw_file.is_file():
            raise UserError(f"{raw_file} not found: run the download stage first (`dvc repro download`)")
        lines = raw_file.read_text(encoding="utf-8").splitlines()
        report = SourceReport()
        records = parse_records(source, lines, data.system_prompt, data.min_answer_chars, report)
        records = drop_duplicates(records, report)
        splits = split_records(records, data.split, params.seed)
        splits["train_small"] = seeded_subset(splits["train"], data.grpo_subset_size, params.seed)
        for name, split_records_ in splits.items():
            atomic.write_jsonl(PROCESSED_DIR / source / f"{name}.jsonl", split_records_)
        report.splits = {name: len(splits[name]) for name in SPLITS}
        assert report.kept == sum(report.splits.values()), "every kept record is in exactly one split"
        for name in SPLITS:
            combined[name].extend(splits[name])
        metrics.update(report.as_metrics(f"{source}."))
        _add(totals, report)
        log.info("%s: %d in, %d kept, dropped %s, split %s", source, report.records_in, report.kept,
                 dict(report.dropped) or "none", report.splits)
    write_verl_parquet(combined, VERL_DATA_DIR)
    atomic.write_json(METRICS_FILE, {**totals.as_metrics(""), **metrics})
    log.info("total: %d in, %d kept, %d dropped", totals.records_in, totals.kept, sum(totals.dropped.values()))


def _add(totals: SourceReport, report: SourceReport) -> None:
    totals.records_in += report.records_in
    totals.dropped.update(report.dropped)
    for name, count in report.splits.items():
        totals.splits[name] = totals.splits.get(name, 0) + count


if __name__ == "__main__":
    cli.run(main)
