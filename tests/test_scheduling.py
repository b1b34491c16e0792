"""How `make test` spreads the suite over two workers (pytest -n 2, the scheduler in tests/conftest.py)."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, TINY_RUN_MODULES

# Prints, after collection, each test and whether `tiny_run` is among the fixtures it uses.
FIXTURE_REPORT = """
import json

def pytest_collection_finish(session):
    print("USES", json.dumps({item.nodeid: "tiny_run" in item.fixturenames for item in session.items}))
"""


@pytest.mark.slow  # collects the whole suite: about 9 s
def test_the_tiny_run_modules_are_exactly_those_whose_tests_use_it(tmp_path):
    (tmp_path / "fixture_report.py").write_text(FIXTURE_REPORT)
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "fixture_report"],
                               cwd=REPO, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    uses = json.loads(collected.stdout.split("USES ", 1)[1].splitlines()[0])
    assert {nodeid.split("::")[0] for nodeid, used in uses.items() if used} == TINY_RUN_MODULES


def test_modules_stay_whole_and_the_tiny_run_ones_go_first_to_one_worker(tmp_path):
    """A made-up suite with the tiny-run modules' names, run with -n 2 and the repository's scheduler."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("repo_conftest", {str(REPO / "tests" / "conftest.py")!r})
        repo_conftest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(repo_conftest)
        pytest_xdist_make_scheduler = repo_conftest.pytest_xdist_make_scheduler
        """))
    modules = sorted(TINY_RUN_MODULES) + ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]
    (tmp_path / "tests").mkdir()
    for module in modules:
        (tmp_path / module).write_text("".join(f"def test_{i}():\n    pass\n" for i in range(3)))
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider", "tests"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    ran = re.findall(r"\[(gw\d)\] \[ *\d+%\] PASSED (\S+)::", run.stdout)
    assert len(ran) == 3 * len(modules), run.stdout
    workers = {module: {worker for worker, m in ran if m == module} for module in modules}
    assert all(len(on) == 1 for on in workers.values()), workers  # no module split
    tiny_worker = {worker for module in TINY_RUN_MODULES for worker in workers[module]}
    assert len(tiny_worker) == 1, workers
    on_it = [module for worker, module in ran if worker in tiny_worker]
    assert set(on_it[:3 * len(TINY_RUN_MODULES)]) == TINY_RUN_MODULES, on_it  # before anything else there
