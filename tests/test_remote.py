"""DVC remotes for real: the default local remote (push, fresh clone, pull, nothing retrains) and a
WebDAV server on 127.0.0.1 (round trip with credentials kept out of git; a clear error when it is down)."""
import json
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    clone_with_cache,
    commit,
    copy_checkout,
    free_port,
    ok,
    sh,
    stop,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture
def team(tmp_path) -> Path:
    """A directory holding a copy of this checkout as `meddialog/`, as beside a real checkout."""
    copy_checkout(tmp_path / "meddialog")
    return tmp_path


def cached_outputs(repo: Path) -> list[Path]:
    """Every file under the pipeline's cached (pushed) outputs, relative to the repository."""
    files = []
    for out in ("data/raw", "data/processed", "data/verl", "models/sft", "models/grpo",
                "metrics/baseline_predictions.jsonl", "metrics/sft_predictions.jsonl",
                "metrics/grpo_predictions.jsonl"):
        path = repo / out
        files += [p.relative_to(repo) for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    return files


def test_push_then_a_fresh_clone_pulls_everything_and_retrains_nothing(tiny_run):
    # the committed default remote, `../meddialog-dvc-remote` from the repository, as resolved
    team, work = tiny_run.parent, clone_with_cache(tiny_run, "pusher")
    ok(sh("dvc", "push", cwd=work))
    assert (team / "meddialog-dvc-remote" / "files" / "md5").is_dir()  # the committed default, as resolved
    assert "Cache and remote 'local-store' are in sync" in ok(sh("dvc", "status", "-c", cwd=work)).stdout

    ok(sh("git", "clone", "-q", "pusher", "fresh", cwd=team))
    fresh = team / "fresh"
    ok(sh("dvc", "pull", cwd=fresh))
    pushed = cached_outputs(work)
    assert {"models/sft/adapter_model.safetensors", "models/grpo/adapter_model.safetensors",
            "data/processed/dialogues/train.jsonl", "metrics/grpo_predictions.jsonl"} <= set(map(str, pushed))
    assert cached_outputs(fresh) == pushed
    assert all((fresh / p).read_bytes() == (work / p).read_bytes() for p in pushed)
    # models/base is never pushed: before it is rebuilt, it is the only thing status reports
    status = ok(sh("dvc", "status", "--json", "dvc.yaml", cwd=fresh)).stdout
    assert "models/base" in status and not any(
        name in status for name in ("data/processed", "models/sft", "models/grpo", "params.yaml"))

    repro = ok(sh("dvc", "repro", cwd=fresh)).stdout
    assert "Running stage 'base_model'" in repro and repro.count("Running stage") == 1, repro
    # the rebuild is byte-identical: dvc.lock unchanged, everything downstream still up to date
    ok(sh("git", "diff", "--exit-code", "dvc.lock", cwd=fresh))
    assert "Data and pipelines are up to date" in ok(sh("dvc", "status", "dvc.yaml", cwd=fresh)).stdout
    assert "Cache and remote 'local-store' are in sync" in ok(sh("dvc", "status", "-c", cwd=fresh)).stdout


# --- WebDAV -----------------------------------------------------------------------------------

# made up at run time, so that finding it in a committed file means it leaked there
USER, PASSWORD = "alice", "pw" + secrets.token_hex(12)  # never starting with "-", which dvc would read as an option


@pytest.fixture
def webdav(tmp_path_factory):
    """A WsgiDAV server on a free port of 127.0.0.1, basic auth, sharing `<root>/share` (with the
    remote's folder `meddialog/` already there, as on a real server: see docs/remotes-and-mlflow.md). Yields
    (url, share directory, process). gunicorn serves it: already installed (MLflow uses it), and its
    threads handle DVC's parallel uploads; its control socket, a file under ~/, is turned off."""
    root = tmp_path_factory.mktemp("webdav")
    (root / "share" / "meddialog").mkdir(parents=True)
    port = free_port()
    config = {
        "host": "127.0.0.1", "port": port, "server": "gunicorn",
        "server_args": {"control_socket_disable": True},
        "provider_mapping": {"/": str(root / "share")},
        "simple_dc": {"user_mapping": {"*": {USER: {"password": PASSWORD}}}},
        "http_authenticator": {"accept_basic": True, "accept_digest": False, "default_to_digest": False},
        "verbose": 2,
    }
    (root / "wsgidav.json").write_text(json.dumps(config))
    with (root / "server.log").open("w") as server_log:
        process = subprocess.Popen([str(BIN / "wsgidav"), "-c", str(root / "wsgidav.json")], cwd=root,
                                   stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "WebDAV server did not start:\n" + (root / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"webdav://127.0.0.1:{port}/meddialog", root / "share" / "meddialog", process
    finally:
        stop(process)


def add_webdav_remote(repo: Path, url: str | None) -> None:
    """The recipe of docs/remotes-and-mlflow.md: URL in .dvc/config (committed), credentials in .dvc/config.local (never)."""
    if url:
        ok(sh("dvc", "remote", "add", "webdav", url, cwd=repo))
    ok(sh("dvc", "remote", "modify", "--local", "webdav", "user", USER, cwd=repo))
    ok(sh("dvc", "remote", "modify", "--local", "webdav", "password", PASSWORD, cwd=repo))


def test_webdav_round_trip_with_credentials_outside_git(team, webdav):
    url, share, _ = webdav
    work = team / "meddialog"
    ok(sh("dvc", "repro", "process", cwd=work))  # download + process: real outputs, no model needed
    add_webdav_remote(work, url)
    commit(work, "processed data, WebDAV remote")
    assert PASSWORD not in (work / ".dvc" / "config").read_text()
    assert sh("git", "grep", "-q", PASSWORD, cwd=work).returncode == 1  # in no committed file

    pushed = ok(sh("dvc", "push", "-r", "webdav", "--with-deps", "process", cwd=work))
    assert "files pushed" in pushed.stdout
    assert len(list((share / "files" / "md5").rglob("*"))) > 10  # stored on the server's disk

    ok(sh("git", "clone", "-q", "meddialog", "fresh", cwd=team))
    fresh = team / "fresh"
    # the clone has the remote's URL but not the password
    refused = sh("dvc", "pull", "-r", "webdav", "--with-deps", "process", cwd=fresh)
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr
    add_webdav_remote(fresh, None)
    ok(sh("dvc", "pull", "-r", "webdav", "--with-deps", "process", cwd=fresh))
    processed = sorted(p.relative_to(work) for p in (work / "data" / "processed").rglob("*.jsonl"))
    assert processed and all((fresh / p).read_bytes() == (work / p).read_bytes() for p in processed)
    assert "Data and pipelines are up to date" in ok(sh("dvc", "status", "process", cwd=fresh)).stdout


def test_webdav_server_down_is_a_clear_error(team, webdav):
    url, _, process = webdav
    work = team / "meddialog"
    ok(sh("dvc", "repro", "process", cwd=work))
    add_webdav_remote(work, url)
    stop(process)
    started = time.monotonic()
    push = sh("dvc", "push", "-r", "webdav", "--with-deps", "process", cwd=work)
    # 255 is DVC's exit code for an error it did not anticipate; the message names the cause
    assert push.returncode == 255, push.stdout + push.stderr
    assert "ERROR" in push.stderr and "Connection refused" in push.stderr, push.stderr
    assert time.monotonic() - started < 60  # fails fast, no long retry loop
