"""Fixtures for the verl tests, which run in verl's own virtualenv (`make test-verl`), on the CPU.

The project's parquet files come from running the download and process stages on the embedded
sample, and the model is the main suite's tiny random Llama with the embedded tokenizer.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _main_conftest():
    """tests/conftest.py, loaded by path: verl's wheel installs a top-level `tests` package of its
    own, which hides ours from `import tests.conftest` in this environment."""
    spec = importlib.util.spec_from_file_location("main_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_main = _main_conftest()
run_stage = _main.run_stage
embedded_tokenizer_dir = _main.embedded_tokenizer_dir  # the main suite's fixtures, shared
tiny_model_dir = _main.tiny_model_dir


@pytest.fixture(scope="session")
def verl_project(tmp_path_factory, tiny_model_dir) -> Path:
    """A scratch project: params.yaml, data/verl/*.parquet from the sample, the tiny model as models/base."""
    project = tmp_path_factory.mktemp("verl_project")
    shutil.copytree(REPO / "data" / "sample", project / "data" / "sample")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    for stage in ("download", "process"):
        result = run_stage(stage, project)
        assert result.returncode == 0, result.stderr
    shutil.copytree(tiny_model_dir, project / "models" / "base")
    return project


@pytest.fixture(scope="session")
def params(verl_project):
    from meddialog.params import load_params

    return load_params(verl_project / "params.yaml")


@pytest.fixture
def tokenizer(tiny_model_dir):
    """The tokenizer as verl loads it (verl.utils.hf_tokenizer: pad token set to eos when missing)."""
    from verl.utils import hf_tokenizer

    return hf_tokenizer(str(tiny_model_dir))


@pytest.fixture
def compose():
    """compose(argv): the config verl's entry point builds from that command line (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def config_of(argv: list[str]):
        options = dict(a.split("=", 1) for a in argv if a.startswith("--config-"))
        overrides = [a for a in argv if "=" in a and not a.startswith("-")]
        with initialize_config_dir(config_dir=options["--config-path"], version_base=None):
            return hydra_compose(options["--config-name"], overrides=overrides)

    return config_of
