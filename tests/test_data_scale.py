"""tools/data_scale.py: the records it makes are distinct past the dump's length, and what process drops in
them is counted as on the real data."""
import json
import sys

from tests.conftest import REPO, sh
from tools.data_scale import read_dump, synthetic_records


def test_records_repeat_the_dump_with_distinct_questions(tmp_path):
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps([{"instruction": "i", "input": f"q{n}", "output": "an answer long enough"}
                                for n in range(3)]))
    synthetic_records(read_dump(dump), 7, tmp_path / "out.jsonl")
    questions = [json.loads(line)["input"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert questions == ["q0", "q1", "q2", "(1) q0", "(1) q1", "(1) q2", "(2) q0"]


def test_the_table_counts_what_process_keeps_and_drops(tmp_path):
    dump = tmp_path / "dump.json"
    records = [{"instruction": "i", "input": f"question {n}?", "output": f"answer number {n}, long enough"}
               for n in range(20)]
    records[3]["output"] = 42  # wrong type: dropped in every repetition
    dump.write_text(json.dumps(records))
    result = sh(sys.executable, "-m", "tools.data_scale", "--dump", str(dump), "--sizes", "50", cwd=REPO,
                env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    row = result.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "50" and row[2].strip() == "50 / 47 / 3", result.stdout

    bad = sh(sys.executable, "-m", "tools.data_scale", "--dump", str(tmp_path / "none.json"), cwd=REPO,
             env={"PYTHONPATH": str(REPO)})
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "cannot read a JSON list" in bad.stderr
