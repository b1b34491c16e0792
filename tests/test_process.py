import json

from meddialog.data.dataset import (
    SourceReport,
    drop_duplicates,
    parse_records,
    split_records,
)
from meddialog.params import SplitParams
from tests.conftest import read_jsonl, run_stage, write_jsonl, write_params


def qa(q, a):
    return {"instruction": "Answer this question truthfully", "input": q, "output": a}


def make_raw_project(tmp_path, records, **overrides):
    """A project whose only source is `records`, already downloaded to data/raw."""
    write_jsonl(tmp_path / "data" / "raw" / "src.jsonl", records)
    source = {"path": "data/raw/src.jsonl", "num_samples": 0, "split": "train", "revision": None}
    write_params(tmp_path, **{"data.sources": {"src": source}, "sft.sources": ["src"], **overrides})
    return tmp_path


def test_every_drop_reason_is_counted_and_in_equals_kept_plus_dropped(tmp_path):
    records = [qa(f"Question number {i}?", f"A long enough answer {i}.") for i in range(40)]
    records += [
        "{not json", json.dumps(["a", "list"]), '{"input": "bad \ufffd", "output": "Long enough answer."}',
        {"foo": 1}, qa("", "An answer here."), qa("Empty answer?", ""), qa("Short?", "No."),
        {"conversations": [{"from": "human", "value": "Only a question"}]},
        qa("Question number 0?", "A long enough answer 0."),  # exact duplicate
        qa("QUESTION   number 0?", "a long enough answer 0."),  # duplicate after normalisation
        qa(42, "A long enough answer."), qa("A list answer?", ["a", "list"]),  # wrong types
        {"messages": [{"role": "user", "content": {"text": "nested"}}, {"role": "assistant", "content": "Long enough."}]},
    ]
    project = make_raw_project(tmp_path, records)
    result = run_stage("process", project)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    assert metrics["in"] == 53
    assert metrics["dropped_malformed_json"] == 2
    assert metrics["dropped_undecodable"] == 1
    assert metrics["dropped_unknown_format"] == 1
    assert metrics["dropped_empty_question"] == 1
    assert metrics["dropped_empty_answer"] == 1
    assert metrics["dropped_answer_too_short"] == 1
    assert metrics["dropped_no_assistant_turn"] == 1
    assert metrics["dropped_duplicate"] == 2
    assert metrics["dropped_wrong_type"] == 3
    assert metrics["kept"] == 40 and metrics["in"] == metrics["kept"] + metrics["dropped"]
    assert metrics["train"] + metrics["val"] + metrics["test"] == 40


def test_records_have_id_source_and_system_prompt(tmp_path):
    project = make_raw_project(tmp_path, [qa(f"Q {i}?", f"Answer text {i}.") for i in range(20)])
    assert run_stage("process", project).returncode == 0
    record = read_jsonl(project / "data" / "processed" / "src" / "train.jsonl")[0]
    assert set(record) == {"id", "source", "messages"} and record["source"] == "src"
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]


def test_shared_question_stays_in_one_split_and_duplicates_go_before_splitting():
    report = SourceReport()
    lines = [json.dumps(qa("When to seek urgent medical care?", f"For disease {i}, call if worse.")) for i in range(30)]
    lines += [json.dumps(qa(f"Unique question {i}?", f"Unique answer {i}.")) for i in range(70)]
    lines += lines[:10]  # exact duplicates must not end up on both sides of a split
    records = drop_duplicates(parse_records("s", lines, "sys", 5, report), report)
    assert report.dropped["duplicate"] == 10
    splits = split_records(records, SplitParams(0.8, 0.1, 0.1), seed=1)
    holders = {name for name, rs in splits.items()
               if any(r["messages"][1]["content"].startswith("When to seek") for r in rs)}
    assert len(holders) == 1
    assert sum(len(rs) for rs in splits.values()) == 100
    assert len(splits["test"]) >= 10 and len(splits["val"]) >= 10


def test_multi_turn_records_sharing_any_patient_message_share_a_split():
    def dialogue(first, second, i):
        return json.dumps({"messages": [{"role": "user", "content": first}, {"role": "assistant", "content": f"ok {i} fine"},
                                        {"role": "user", "content": second}, {"role": "assistant", "content": f"done {i} ok"}]})
    lines = [dialogue(f"opening {i}", f"follow-up {i}", i) for i in range(50)]
    lines.append(dialogue("a different opening", "follow-up 7", 99))  # linked to record 7 by its 2nd turn
    report = SourceReport()
    records = parse_records("s", lines, "sys", 2, report)
    for seed in range(5):
        splits = split_records(records, SplitParams(0.8, 0.1, 0.1), seed)
        where = {r["id"]: name for name, rs in splits.items() for r in rs}
        assert where["s-000007"] == where["s-000050"]


def test_split_is_deterministic_per_seed(tmp_path):
    records = [qa(f"Question {i}?", f"Answer number {i}.") for i in range(200)]
    outputs = []
    for run, seed in enumerate([7, 7, 8]):
        project = make_raw_project(tmp_path / f"run{run}", records, seed=seed)
        assert run_stage("process", project).returncode == 0
        outputs.append({p.relative_to(project): p.read_bytes()
                        for p in sorted((project / "data").glob("**/*")) if p.is_file() and "raw" not in p.parts})
    assert outputs[0] == outputs[1]
    assert outputs[0][next(iter(k for k in outputs[0] if k.name == "test.jsonl"))] != \
        outputs[2][next(iter(k for k in outputs[2] if k.name == "test.jsonl"))]


def test_verl_parquet_schema(tmp_path):
    import pyarrow.parquet as pq

    project = make_raw_project(tmp_path, [qa(f"Question {i}?", f"Answer number {i}.") for i in range(30)])
    assert run_stage("process", project).returncode == 0
    rl = pq.read_table(project / "data" / "verl" / "rl_train.parquet").to_pylist()
    row = rl[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["reward_model"]["style"] == "rule" and row["reward_model"]["ground_truth"].startswith("Answer number")
    assert row["extra_info"]["question"] == row["prompt"][-1]["content"]
    assert set(row["extra_info"]) == {"index", "split", "source", "question"}
    sft = pq.read_table(project / "data" / "verl" / "sft_train.parquet").to_pylist()
    assert len(sft) == len(rl) and [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]


def test_missing_raw_file_is_one_line(tmp_path):
    write_params(tmp_path)
    result = run_stage("process", tmp_path)
    assert result.returncode == 1
    assert "run the download stage first" in result.stderr and "Traceback" not in result.stderr
