"""The data stages at scale: download and process on N records in a real raw schema, seconds and peak memory.

    python -m tools.data_scale --dump ../shared/realdata/chatdoctor5k.json --sizes 11500 57500 115000

`--dump` is a JSON list of {"instruction", "input", "output"} records, the schema of the hub datasets the
pipeline downloads (chatdoctor5k.json is ChatDoctor-HealthCareMagic's). Each size's records are the dump's
taken in turn and made distinct by a numbered prefix on the question (process drops repeated questions),
so their text, lengths and quirks are real ones. They go, outside the repository, in place of the
healthcaremagic source; the other sources stay the embedded sample. Each size runs `stages.download` and
`stages.process` in a scratch workspace (tools/workspace.py) and reports each stage's wall time and peak
resident memory with the records kept and dropped (metrics/data.json of that workspace). Nothing in the
repository changes.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError
from tools.workspace import run_module, write_params

SOURCE = "healthcaremagic"


def read_dump(dump: Path) -> list:
    try:
        records = json.loads(dump.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--dump {dump}: cannot read a JSON list of records ({err})") from None
    if not isinstance(records, list) or not records:
        raise UserError(f"--dump {dump}: expected a non-empty JSON list of records")
    return records


def synthetic_records(records: list, size: int, out: Path) -> None:
    with out.open("w", encoding="utf-8") as f:
        for i in range(size):
            record = dict(records[i % len(records)])
            if i >= len(records) and isinstance(record.get("input"), str):
                record["input"] = f"({i // len(records)}) {record['input']}"
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def measure(records: list, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        root = Path(tmp)
        raw = root / "dump.jsonl"
        synthetic_records(records, size, raw)
        write_params(root, {f"data.sources.{SOURCE}.path": str(raw), f"data.sources.{SOURCE}.num_samples": 0})
        row: dict[str, float] = {"records": size}
        for stage in ("download", "process"):
            started = time.perf_counter()
            row[f"{stage}_peak_mb"] = run_module(f"stages.{stage}", root)
            row[f"{stage}_s"] = time.perf_counter() - started
        counts = json.loads((root / "metrics" / "data.json").read_text())
        row.update({key: counts[f"{SOURCE}.{key}"] for key in ("in", "kept", "dropped")})
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", type=Path, required=True, help="a JSON list of instruction/input/output records")
    parser.add_argument("--sizes", type=int, nargs="+", default=[11500, 57500, 115000])
    args = parser.parse_args()
    if any(size < 1 for size in args.sizes):
        raise UserError("--sizes must be positive")
    records = read_dump(args.dump)
    print("| records | healthcaremagic in / kept / dropped | download s | download peak MB | process s | process peak MB |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        r = measure(records, size)
        print(f"| {size} | {r['in']} / {r['kept']} / {r['dropped']} | {r['download_s']:.1f} | "
              f"{r['download_peak_mb']:.0f} | {r['process_s']:.1f} | {r['process_peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    cli.run(main)
