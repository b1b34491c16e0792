"""MLflow over HTTP for real: a training stage logs to an `mlflow server` on 127.0.0.1 and the run
is read back through the server; with no server there, the stage still finishes and says so once."""
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, run_stage, sh, stop, write_params

pytestmark = pytest.mark.slow

TINY_SFT = {"sft.max_steps": 2, "sft.batch_size": 2, "sft.max_samples": 8, "sft.eval_samples": 2, "sft.eval_steps": 1,
            "sft.save_steps": 2, "sft.max_length": 128, "lora.r": 2, "lora.alpha": 4}


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free port: sqlite store and artifact destination in a temp directory.
    Yields (url, artifact directory, server process) once /health answers."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (root / "server.log").open("w") as server_log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            cwd=root, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180  # about 20 s on an idle 2-core machine (database migrations)
        while True:
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start:\n" + (root / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.read() == b"OK":
                        break
            except OSError:
                time.sleep(0.5)
        yield url, root / "artifacts", process
    finally:
        stop(process)


def test_sft_logs_params_metrics_tags_and_adapter_to_a_tracking_server(tiny_project, mlflow_server):
    from mlflow import MlflowClient

    url, artifacts, _ = mlflow_server
    write_params(tiny_project, **TINY_SFT, **{"mlflow.log_models": True})
    # a git repository, so that the git_commit tag has a real commit to name
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        assert sh(*cmd, cwd=tiny_project).returncode == 0
    commit = sh("git", "rev-parse", "HEAD", cwd=tiny_project).stdout.strip()

    result = run_stage("sft", tiny_project, env={"MLFLOW_TRACKING_URI": url, "DVC_EXP_NAME": "server-test"})
    assert result.returncode == 0, result.stderr
    assert "tracking skipped" not in result.stderr
    assert not (tiny_project / "mlflow.db").exists()  # the server's store, not the embedded default

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("meddialog")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "sft" and run.data.tags["dvc_exp_name"] == "server-test"
    assert run.data.tags["git_commit"] == commit
    assert run.data.params["sft.max_steps"] == "2" and run.data.params["lora.r"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    # before training, every sft.eval_steps, and the final evaluation
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [0, 1, 2, 2]
    assert run.data.metrics["final_steps"] == 2
    # the adapter went through the server into its artifact destination
    assert "adapter/adapter_model.safetensors" in [a.path for a in client.list_artifacts(run.info.run_id, "adapter")]
    assert list(artifacts.rglob("adapter_model.safetensors"))


def test_unreachable_server_skips_tracking_once_and_training_finishes(tiny_project):
    port = free_port()  # nothing listens there
    write_params(tiny_project, **TINY_SFT)
    result = run_stage("sft", tiny_project, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr
    assert (tiny_project / "models" / "sft" / "adapter_model.safetensors").is_file()
    assert (tiny_project / "metrics" / "sft_train.json").is_file()
    # one line about the server, and it says what happened (urllib3's per-retry warnings are silenced)
    mentions = [line for line in result.stderr.splitlines() if f":{port}" in line or "tracking" in line.lower()]
    assert len(mentions) == 1 and "MLflow tracking skipped" in mentions[0], result.stderr


def test_connecting_to_a_closed_port_gives_up_in_seconds(tmp_path, monkeypatch):
    """The bound on the connection alone (not on a training run, whose length depends on the machine's
    load): MLflow's default retries take about 4 minutes against a closed port."""
    from meddialog.tracking import start_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with start_run("sft", "meddialog") as run:
        gave_up_after = time.monotonic() - started
        assert run.failed
    assert gave_up_after < 60, f"connecting took {gave_up_after:.0f} s"  # a hang guard: measured about 6 s


def test_a_server_lost_mid_run_skips_the_rest_once_and_ends_in_seconds(mlflow_server, monkeypatch, caplog):
    """The server answers when the run starts and is killed before the next call: one warning, every later
    call skipped without a request, and ending the run bounded by the quick-failure limits."""
    from meddialog.tracking import start_run

    url, _, process = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with caplog.at_level("WARNING", logger="meddialog.tracking"):
        with start_run("sft", "lost-server") as run:
            run.log_metrics({"loss": 1.0})
            assert not run.failed
            stop(process)
            started = time.monotonic()
            run.log_metrics({"loss": 0.5})
            run.log_params({"lr": 1e-4})
            run.log_metrics({"loss": 0.25})
            assert run.failed
        ended_after = time.monotonic() - started
    warnings = [r.getMessage() for r in caplog.records if "MLflow tracking skipped" in r.getMessage()]
    assert len(warnings) == 1 and "from here on" in warnings[0], warnings
    # tracking.RUN_LIMITS: 4 retries, 30 s of backoff (MLflow's defaults held it 252 s)
    assert ended_after < 60, f"the lost server held the stage {ended_after:.0f} s"
