"""The tutorial's mirror fallback (meddialog/hub.py) on real sockets: an unreachable hub and a mirror that
answers, and huggingface_hub, imported afterwards, talking to the mirror."""
import http.server
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO

SELECT_THEN_IMPORT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from meddialog.hub import select_endpoint
print(select_endpoint("dataset x", sys.argv[1], 5, offline_hint="use the sample"))
import huggingface_hub.constants  # after select_endpoint, as meddialog/data/sources.py imports datasets
print(huggingface_hub.constants.ENDPOINT)
"""


class StatusOnly(http.server.BaseHTTPRequestHandler):
    """A mirror as far as the probe sees it: it answers /api/status and counts the requests."""
    requests: list[str] = []

    def do_HEAD(self):
        StatusOnly.requests.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StatusOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StatusOnly.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def select(mirror_url: str, hub: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub}
    return subprocess.run([sys.executable, "-c", SELECT_THEN_IMPORT, mirror_url], capture_output=True, text=True,
                          env=env, timeout=120)


def test_an_unreachable_hub_falls_back_to_the_mirror_and_huggingface_hub_uses_it(mirror):
    result = select(mirror, "http://127.0.0.1:9")  # nothing listens on the discard port
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [mirror, mirror]
    assert f"http://127.0.0.1:9 unreachable; using the mirror {mirror}" in result.stderr
    assert StatusOnly.requests == ["/api/status"]


def test_a_reachable_hub_is_used_and_the_mirror_never_asked(mirror):
    result = select("http://127.0.0.1:9", mirror)  # here the answering server is the hub itself
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [mirror, mirror] and "using the mirror" not in result.stderr
    assert StatusOnly.requests == ["/api/status"]
