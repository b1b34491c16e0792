"""Turning raw JSON lines into clean, de-duplicated, split conversations (pure functions).

Order matters and is deliberate:
  1. parse + normalise each record (`conversations.to_turns`), counting every drop by reason;
  2. remove exact duplicates (same normalised dialogue) *before* splitting, so one text can
     never be both trained on and tested on;
  3. group records that share any patient message (real data repeats generic questions such as
     "When to seek urgent medical care?" with a different answer per disease) and split whole
     groups, so no question text appears in two splits;
  4. order the groups by a seeded hash and fill test, then val, then train: the same seed gives
     byte-identical splits, another seed a different partition.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from meddialog.data.conversations import (
    DROP_REASONS,
    USER,
    Dropped,
    normalised,
    to_turns,
)
from meddialog.errors import UserError
from meddialog.params import SplitParams
from meddialog.paths import PROCESSED_DIR

SPLITS = ("train", "val", "test")


@dataclass
class SourceReport:
    """Counts for metrics/data.json; `records_in == kept + sum(dropped)` always."""

    records_in: int = 0
    dropped: Counter = field(default_factory=Counter)
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return self.records_in - sum(self.dropped.values())

    def as_metrics(self, prefix: str) -> dict[str, int]:
        metrics = {f"{prefix}in": self.records_in, f"{prefix}kept": self.kept,
                   f"{prefix}dropped": sum(self.dropped.values())}
        metrics.update({f"{prefix}dropped_{reason}": self.dropped[reason] for reason in DROP_REASONS})
        metrics.update({f"{prefix}{split}": self.splits.get(split, 0) for split in SPLITS})
        return metrics


def parse_records(source: str, lines: list[str], system_prompt: str, min_answer_chars: int,
                  report: SourceReport) -> list[dict]:
    """Raw JSON lines → `{"id", "source", "messages"}` records; drops are counted in `report`."""
    records = []
    for index, line in enumerate(lines):
        report.records_in += 1
        try:
            messages = _parse_line(line, min_answer_chars)
        except Dropped as drop:
            report.dropped[drop.reason] += 1
            continue
        records.append({"id": f"{source}-{index:06d}", "source": source,
                        "messages": [{"role": "system", "content": system_prompt}] + messages})
    return records


def _parse_line(line: str, min_answer_chars: int) -> list[dict[str, str]]:
    if "\ufffd" in line:  # invalid UTF-8 in the raw file, replaced on read
        raise Dropped("undecodable")
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise Dropped("malformed_json") from None
    if not isinstance(record, dict):
        raise Dropped("malformed_json")
    messages = to_turns(record)
    if len(messages[-1]["content"]) < min_answer_chars:
        raise Dropped("answer_too_short")
    return messages


def drop_duplicates(records: list[dict], report: SourceReport) -> list[dict]:
    """Keep the first of records whose whole dialogue is the same after normalisation."""
    seen: set[str] = set()
    unique = []
    for record in records:
        key = "\x1e".join(normalised(m["content"]) for m in record["messages"] if m["role"] != "system")
        if key in seen:
            report.dropped["duplicate"] += 1
            continue
        seen.add(key)
        unique.append(record)
    return unique


def split_records(records: list[dict], ratios: SplitParams, seed: int) -> dict[str, list[dict]]:
    """Seeded group split: records sharing a patient message always land in the same split."""
    groups = _question_groups(records)
    order = sorted(groups, key=lambda root: _seeded_hash(seed, root))
    total = len(records)
    targets = {"test": round(total * ratios.test), "val": round(total * ratios.val)}
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for root in order:
        members = groups[root]
        target = next((s for s in ("test", "val") if len(splits[s]) < targets[s]), "train")
        splits[target].extend(members)
    for name in SPLITS:
        splits[name].sort(key=lambda r: r["id"])
    return splits


def read_split(sources: list[str], split: str) -> list[dict]:
    """Processed records of `split` (train, val, test or train_small) for each source, in file order."""
    records = []
    for source in sources:
        path = PROCESSED_DIR / source / f"{split}.jsonl"
        if not path.is_file():
            raise UserError(f"{path} not found: run the process stage first (`dvc repro process`)")
        records.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return records


def _question_groups(records: list[dict]) -> dict[str, list[dict]]:
    """Union-find over patient messages: records linked by any shared user turn form one group."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys_per_record = []
    for record in records:
        keys = [normalised(m["content"]) for m in record["messages"] if m["role"] == USER]
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
        keys_per_record.append(keys[0])
    groups: dict[str, list[dict]] = {}
    for record, key in zip(records, keys_per_record):
        groups.setdefault(find(key), []).append(record)
    return groups


def _seeded_hash(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{text}".encode()).hexdigest()
