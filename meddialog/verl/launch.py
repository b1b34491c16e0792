"""verl command lines, built from params.yaml: what stages.verl_sft and stages.verl_grpo run.

verl 0.9.1 lives in its own virtualenv (`verl.python`, made by `make setup-verl`), because it pins
transformers below the main stack's. Nothing here imports verl: these functions only build
argument lists, which the stages run as subprocesses (and `--dry-run` prints).

Each launch is verl's own entry point with our Hydra config (configs/verl/<name>.yaml, which
extends verl's packaged config through Hydra's search path) plus `key=value` overrides for every
value that comes from params.yaml. All paths are absolute, since verl's Ray workers do not
necessarily start in the repository root: code and configs are found beside this file, data and
models in the working directory the stage runs in (the repository root, or DVC's copy of it).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddialog.errors import UserError
from meddialog.params import LoraParams, Params
from meddialog.paths import VERL_DATA_DIR
from meddialog.tracking import repo_root, tracking_uri

CODE_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = CODE_ROOT / "configs" / "verl"
REWARD_FILE = CODE_ROOT / "meddialog" / "verl" / "reward.py"  # verl loads `compute_score` from it


class Expanded(str):
    """An argument the shell must expand when a printed command is run (see `Command.shell`)."""


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment

    def shell(self) -> str:
        """One line to paste into bash: `VAR=value ... argv`."""
        words = [f"{name}={shlex.quote(value)}" for name, value in self.env.items()]
        words += [f'"{arg}"' if isinstance(arg, Expanded) else shlex.quote(arg) for arg in self.argv]
        return " ".join(words)


def verl_python(params: Params) -> str:
    """`verl.python`, relative to the main repository (DVC_ROOT under `dvc exp run --temp`, whose
    copy of the repository has no git-ignored .venv-verl). Not resolved: a virtualenv's bin/python
    is a symlink, and following it would leave the virtualenv."""
    return str(repo_root() / params.verl.python)


def launch_env() -> dict[str, str]:
    """PYTHONPATH: verl imports meddialog/verl/reward.py by path, and it imports `meddialog.*`.
    MLFLOW_TRACKING_URI: verl's MLflow logger otherwise writes to sqlite:////tmp/mlruns.db."""
    entries = [str(CODE_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    pythonpath = os.pathsep.join(p for p in dict.fromkeys(entries) if p)
    return {"PYTHONPATH": pythonpath, "MLFLOW_TRACKING_URI": tracking_uri()}


def hydra_args(config_name: str, overrides: dict[str, Any]) -> list[str]:
    return [f"--config-path={CONFIG_DIR}", f"--config-name={config_name}",
            *(f"{key}={hydra_value(value)}" for key, value in overrides.items())]


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar (YAML-like: null, true, 1e-05, [a,b], 'quoted')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    # Hydra gives ( ) [ ] { } : = , and whitespace meanings of their own; quote anything unusual.
    if re.fullmatch(r"[\w/.\-+~@%]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lora_overrides(prefix: str, lora: LoraParams) -> dict[str, Any]:
    """verl's FSDP LoRA (peft underneath). It has no dropout setting: `lora.dropout` does not apply."""
    return {f"{prefix}lora_rank": lora.r, f"{prefix}lora_alpha": lora.alpha,
            f"{prefix}target_modules": list(lora.target_modules)}


def attention_overrides(prefix: str, attn_implementation: str) -> dict[str, Any]:
    """`verl.attn_implementation` for one model section (verl's HFModelConfig).

    verl 0.9.1's FSDP engine has no attention setting of its own: HFModelConfig loads the Hugging
    Face config with `override_config.attn_implementation` (flash_attention_2 when absent), and that
    key is not in verl's config, hence the `+`. Remove-padding (packed sequences, no attention mask)
    runs on flash-attn's kernels, so it is on only with flash_attention_2; verl defaults it to true.
    """
    return {f"+{prefix}override_config.attn_implementation": attn_implementation,
            f"{prefix}use_remove_padding": attn_implementation == "flash_attention_2"}


def sft_command(params: Params, root: Path, model_dir: Path, run_dir: Path) -> Command:
    """`torchrun -m verl.trainer.sft_trainer` on one node; `verl.trainer.sft_trainer_ray` on a Ray cluster."""
    verl, sft = params.verl, params.verl.sft
    overrides = {
        "data.train_files": root / VERL_DATA_DIR / "sft_train.parquet",
        "data.val_files": root / VERL_DATA_DIR / "sft_val.parquet",
        "data.train_batch_size": sft.batch_size,
        "data.max_length": sft.max_length,
        "model.path": root / model_dir,
        "model.trust_remote_code": params.model.trust_remote_code,
        **lora_overrides("model.", params.lora),
        **attention_overrides("model.", verl.attn_implementation),
        "optim.lr": sft.lr,
        "engine.seed": params.seed,
        "trainer.total_epochs": sft.epochs,
        "trainer.total_training_steps": None if sft.max_steps == -1 else sft.max_steps,
        "trainer.save_freq": sft.save_steps,
        "trainer.test_freq": sft.eval_steps,
        "trainer.default_local_dir": root / run_dir,
        "trainer.project_name": params.mlflow.experiment,
        "trainer.experiment_name": "verl_sft",
        "trainer.nnodes": verl.nnodes,
        "trainer.n_gpus_per_node": verl.n_gpus_per_node,
    }
    python = verl_python(params)
    if verl.nnodes == 1:
        # `python -m torch.distributed.run` is torchrun, taken from verl's environment.
        launcher = [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                    f"--nproc_per_node={verl.n_gpus_per_node}", "-m", "verl.trainer.sft_trainer"]
    else:
        # One launch on the head node; Ray places a worker on every GPU of the cluster.
        launcher = [python, "-m", "verl.trainer.sft_trainer_ray"]
    return Command([*launcher, *hydra_args("sft", overrides)], launch_env())


def grpo_command(params: Params, root: Path, model_dir: Path, run_dir: Path) -> Command:
    """`python -m verl.trainer.main_ppo` with configs/verl/grpo.yaml (adv_estimator=grpo); Ray either way."""
    verl, grpo = params.verl, params.verl.grpo
    model = "actor_rollout_ref.model."
    env = launch_env()
    overrides = {
        "data.train_files": root / VERL_DATA_DIR / "rl_train.parquet",
        "data.val_files": root / VERL_DATA_DIR / "rl_val.parquet",
        "data.train_batch_size": grpo.batch_size,
        "data.max_prompt_length": grpo.max_prompt_length,
        "data.max_response_length": grpo.max_completion_length,
        "data.seed": params.seed,
        "data.trust_remote_code": params.model.trust_remote_code,
        f"{model}path": root / model_dir,
        f"{model}trust_remote_code": params.model.trust_remote_code,
        **lora_overrides(model, params.lora),
        # The actor's and the reference's engines both read this model section (GRPO has no critic).
        **attention_overrides(model, verl.attn_implementation),
        "actor_rollout_ref.actor.optim.lr": grpo.lr,
        # One policy update per rollout batch: strictly on-policy, as TRL's GRPO stage trains.
        "actor_rollout_ref.actor.ppo_mini_batch_size": grpo.batch_size,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": grpo.micro_batch_size_per_gpu,
        "actor_rollout_ref.actor.use_kl_loss": grpo.beta > 0,
        "actor_rollout_ref.actor.kl_loss_coef": grpo.beta,
        "actor_rollout_ref.actor.data_loader_seed": params.seed,
        "actor_rollout_ref.rollout.name": grpo.rollout,
        "actor_rollout_ref.rollout.n": grpo.num_generations,
        "actor_rollout_ref.rollout.temperature": grpo.temperature,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": grpo.tensor_parallel_size,
        "actor_rollout_ref.rollout.gpu_memory_utilization": grpo.gpu_memory_utilization,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": grpo.micro_batch_size_per_gpu,
        "actor_rollout_ref.rollout.seed": params.seed,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": grpo.micro_batch_size_per_gpu,
        "reward.custom_reward_function.path": REWARD_FILE,
        "trainer.total_epochs": grpo.epochs,
        "trainer.total_training_steps": None if grpo.max_steps == -1 else grpo.max_steps,
        "trainer.save_freq": grpo.save_steps,
        "trainer.test_freq": grpo.eval_steps,
        "trainer.default_local_dir": root / run_dir,
        "trainer.project_name": params.mlflow.experiment,
        "trainer.experiment_name": "verl_grpo",
        "trainer.nnodes": verl.nnodes,
        "trainer.n_gpus_per_node": verl.n_gpus_per_node,
        # Ray workers on other nodes do not inherit this process's environment: the job's
        # runtime_env hands them the same (our reward function's imports, the MLflow store).
        **{f"+ray_kwargs.ray_init.runtime_env.env_vars.{name}": value for name, value in env.items()},
    }
    argv = [verl_python(params), "-m", "verl.trainer.main_ppo", *hydra_args("grpo", overrides)]
    return Command(argv, env)


def export_command(params: Params, root: Path, checkpoint: str, target: Path) -> Command:
    """verl's model merger: FSDP shards of one checkpoint → a Hugging Face directory (+ lora_adapter/)."""
    argv = [verl_python(params), "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", checkpoint, "--target_dir", str(root / target)]
    if params.model.trust_remote_code:
        argv.append("--trust-remote-code")
    return Command(argv)


def run(command: Command, what: str) -> None:
    python = Path(command.argv[0])
    if not python.is_file():
        raise UserError(f"verl.python: {python} not found; create verl's environment with `make setup-verl` "
                        "(on a GPU machine see docs/scaling.md, 'Several nodes')")
    result = subprocess.run(command.argv, env={**os.environ, **command.env}, check=False)
    if result.returncode != 0:
        raise UserError(f"{what} failed (exit code {result.returncode}); its output is above")
