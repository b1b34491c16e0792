"""The baseline and eval stages and the standalone evaluator, end to end on a tiny model."""
import json

import pytest

from meddialog.evaluation.report import REPORT_METRICS
from tests.conftest import make_adapter, mlflow_runs, read_jsonl, run_stage, write_jsonl

METRIC_KEYS = {"bleu", "sentence_bleu", "rouge1", "rouge2", "rougeL", "similarity", "answer_words_mean",
               "answer_words_median", "repetition", "empty_rate", "num_samples"}
ADAPTER_SCALE = 0.5  # lora_B noise large enough to change the tiny model's greedy answers


@pytest.mark.slow
def test_baseline_stage_writes_metrics_predictions_and_an_mlflow_run(tiny_project):
    result = run_stage("baseline", tiny_project, env={"DVC_EXP_NAME": "exp-test"})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tiny_project / "metrics" / "baseline.json").read_text())
    assert set(metrics) == METRIC_KEYS and metrics["num_samples"] == 6
    rows = read_jsonl(tiny_project / "metrics" / "baseline_predictions.jsonl")
    assert len(rows) == 6 and set(rows[0]) == {"id", "question", "reference", "prediction"}
    (run,) = mlflow_runs(tiny_project)
    assert run.data.tags["stage"] == "baseline" and run.data.tags["dvc_exp_name"] == "exp-test"
    assert run.data.metrics["rougeL"] == pytest.approx(metrics["rougeL"])
    assert run.data.params["generation.max_new_tokens"] == "8"


@pytest.mark.slow
def test_selection_is_seeded_and_the_same_for_every_model(tiny_project):
    assert run_stage("baseline", tiny_project).returncode == 0
    first = [r["id"] for r in read_jsonl(tiny_project / "metrics" / "baseline_predictions.jsonl")]
    assert run_stage("baseline", tiny_project).returncode == 0
    again = read_jsonl(tiny_project / "metrics" / "baseline_predictions.jsonl")
    assert [r["id"] for r in again] == first


@pytest.mark.slow
def test_eval_stage_compares_base_sft_and_grpo(tiny_project, monkeypatch):
    monkeypatch.chdir(tiny_project)  # lineage paths are relative to the repository root
    # trained-like adapters (seeded non-zero lora_B): an untrained one is an exact no-op, and this test would
    # then pass with no adapter applied at all
    make_adapter("models/base", tiny_project / "models" / "sft", lora_b_scale=ADAPTER_SCALE, seed=1)
    make_adapter("models/base", tiny_project / "models" / "grpo", parents=("models/sft",), lora_b_scale=ADAPTER_SCALE,
                 seed=2)
    assert run_stage("baseline", tiny_project).returncode == 0
    result = run_stage("eval", tiny_project)
    assert result.returncode == 0, result.stderr
    rows = {name: read_jsonl(tiny_project / "metrics" / f"{name}_predictions.jsonl") for name in ("baseline", "sft", "grpo")}
    for name in ("sft", "grpo"):
        assert set(json.loads((tiny_project / "metrics" / f"{name}.json").read_text())) == METRIC_KEYS
        assert len(rows[name]) == 6
    # every model answers the same conversations, and each adapter of the chain changes the answers
    assert [r["id"] for r in rows["baseline"]] == [r["id"] for r in rows["sft"]] == [r["id"] for r in rows["grpo"]]
    answers = {name: [r["prediction"] for r in model_rows] for name, model_rows in rows.items()}
    assert answers["sft"] != answers["baseline"] and answers["grpo"] != answers["sft"]
    comparison = json.loads((tiny_project / "metrics" / "comparison.json").read_text())
    for metric in REPORT_METRICS:
        assert {f"{metric}.baseline", f"{metric}.sft", f"{metric}.grpo"} <= set(comparison)
    for metric in ("rougeL", "bleu", "similarity"):
        for pair in ("sft_minus_baseline", "grpo_minus_sft", "grpo_minus_baseline"):
            key = f"{metric}.{pair}"
            assert comparison[f"{key}_low"] <= comparison[key] <= comparison[f"{key}_high"], key
    assert run_stage("report", tiny_project).returncode == 0
    report = (tiny_project / "metrics" / "report.md").read_text()
    assert "## Differences, with 95% intervals" in report and "| rougeL | " in report
    assert "| rougeL |" in report and report.count("### Example") == 3
    assert "| metric | baseline | sft | grpo |" in report
    assert "Produced on cpu, float32, quantization none" in report
    for name in ("baseline", "sft", "grpo"):
        record = json.loads((tiny_project / "metrics" / "provenance" / f"{name}.json").read_text())
        assert record["quantization"] == "none" and record["versions"]["torch"].startswith("2.")


def test_report_says_when_models_were_evaluated_in_different_precisions():
    from meddialog.evaluation.report import markdown

    metrics = {metric: 0.5 for metric in REPORT_METRICS}
    row = [{"id": "a", "question": "q", "reference": "r", "prediction": "p"}]
    results = {"baseline": metrics, "sft": metrics}
    full = {"device": "cpu", "dtype": "float32", "quantization": "none"}
    nf4 = {"device": "cuda (NVIDIA H200, CUDA 13.0)", "dtype": "bfloat16", "quantization": "bitsandbytes nf4"}
    mixed = markdown(results, {"baseline": row, "sft": row}, {"baseline": full, "sft": nf4})
    assert "different precisions, so the columns are not comparable" in mixed and "NVIDIA H200" in mixed
    same = markdown(results, {"baseline": row, "sft": row}, {"baseline": full, "sft": full})
    assert "not comparable" not in same and "Produced on cpu, float32" in same


def test_eval_without_trained_models_is_one_line(tiny_project):
    result = run_stage("eval", tiny_project)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "models/sft not found" in result.stderr


@pytest.mark.slow
def test_evaluator_on_a_model_directory_and_an_adapter(tiny_project, tmp_path, monkeypatch):
    test_file = tiny_project / "data" / "processed" / "medical_flashcards" / "test.jsonl"
    out = tmp_path / "out" / "base.json"
    result = run_stage("tools.evaluate", tiny_project, "--model-path", "models/base", "--test-data", str(test_file),
                       "--num-samples", "3", "--out", str(out), "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(out.read_text())) == METRIC_KEYS
    assert len(read_jsonl(out.with_name("base_predictions.jsonl"))) == 3

    monkeypatch.chdir(tiny_project)
    make_adapter("models/base", tiny_project / "models" / "sft", lora_b_scale=ADAPTER_SCALE)
    result = run_stage("tools.evaluate", tiny_project, "--model-path", "models/sft", "--test-data", str(test_file),
                       "--num-samples", "3", "--out", str(tmp_path / "sft.json"), "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "sft.json").read_text())["num_samples"] == 3
    base_rows, sft_rows = read_jsonl(out.with_name("base_predictions.jsonl")), read_jsonl(tmp_path / "sft_predictions.jsonl")
    assert [r["id"] for r in sft_rows] == [r["id"] for r in base_rows]  # the same seeded selection
    assert [r["prediction"] for r in sft_rows] != [r["prediction"] for r in base_rows]  # the adapter was applied


@pytest.mark.slow
def test_evaluator_reads_raw_tutorial_json(tiny_project, tmp_path):
    raw = [{"instruction": "Answer this question truthfully", "input": f"Question {i}?", "output": f"Answer {i}."}
           for i in range(4)]
    test_file = tmp_path / "test.json"
    test_file.write_text(json.dumps(raw))
    result = run_stage("tools.evaluate", tiny_project, "--model-path", "models/base", "--test-data", str(test_file),
                       "--num-samples", "2", "--out", str(tmp_path / "m.json"), "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case, expected", [
    ("missing_model", "model path no/such/model does not exist"),
    ("neither", "is neither a Hugging Face model directory"),
    ("adapter_without_lineage", "adapter without lineage.json"),
    ("missing_test", "test data file not found"),
    ("empty_test", "holds no conversations"),
    ("malformed_test", ":2: not valid JSON"),
    ("unusable_test", ":1: unusable conversation (unknown format)"),
])
def test_evaluator_errors_are_one_line(tiny_project, tmp_path, case, expected):
    model, test_file = "models/base", tmp_path / "test.jsonl"
    good = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    if case == "missing_model":
        model = "no/such/model"
    elif case == "neither":
        model = str(tmp_path)
    elif case == "adapter_without_lineage":
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        model = str(adapter)
    if case != "missing_test":
        lines = {"empty_test": [], "malformed_test": [good, "{oops"], "unusable_test": [{"foo": 1}]}.get(case, [good])
        write_jsonl(test_file, lines)
    result = run_stage("tools.evaluate", tiny_project, "--model-path", model, "--test-data", str(test_file))
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr and result.stderr.count("\n") == 1, result.stderr
