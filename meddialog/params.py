"""Typed loading and validation of params.yaml.

Every stage calls `load_params()` first, so a typo or an out-of-range value stops the run
with one line naming the key (exit code 2, see `meddialog.cli`) before any model is loaded.

params.yaml is read with YAML 1.2 rules (ruamel.yaml), the way DVC writes it: after
`dvc exp run -S sft.lr=1e-5` the file holds `lr: 1e-05`, which YAML 1.1 (PyYAML) reads as
the *string* '1e-05'; YAML 1.2 reads it as the float it is.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from meddialog.errors import UserError

PARAMS_FILE = Path("params.yaml")


class ParamsError(UserError):
    """A params.yaml value a user must fix."""

    exit_code = 2


@dataclass(frozen=True)
class SourceParams:
    path: str
    num_samples: int = 0
    split: str = "train"
    revision: str | None = None

    def validate(self, key: str) -> None:
        _require(self.path.strip() != "", f"{key}.path", "must not be empty", self.path)
        _require(self.num_samples >= 0, f"{key}.num_samples", "must be >= 0 (0 = all)", self.num_samples)
        if self.path.startswith("hf:"):
            _require(len(self.path) > 3, f"{key}.path", "needs a dataset id after hf:", self.path)


@dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def validate(self, key: str) -> None:
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"{key}.{name}", "must be between 0 and 1", value)
        total = self.train + self.val + self.test
        _require(math.isclose(total, 1.0, abs_tol=1e-6), key, "train + val + test must sum to 1", total)
        _require(self.train > 0, f"{key}.train", "must be > 0", self.train)


@dataclass(frozen=True)
class DataParams:
    sources: dict[str, SourceParams]
    system_prompt: str
    hub_mirror: str = "https://hf-mirror.com"
    hub_timeout_s: float = 5.0
    min_answer_chars: int = 10
    split: SplitParams = field(default_factory=SplitParams)
    grpo_subset_size: int = 64

    def validate(self, key: str) -> None:
        _require(len(self.sources) > 0, f"{key}.sources", "needs at least one source", self.sources)
        for name in self.sources:
            _require(_is_safe_name(name), f"{key}.sources.{name}",
                     "source names may use letters, digits, '_' and '-' only", name)
        _require(self.hub_timeout_s > 0, f"{key}.hub_timeout_s", "must be > 0", self.hub_timeout_s)
        _require(self.min_answer_chars >= 1, f"{key}.min_answer_chars", "must be >= 1", self.min_answer_chars)
        _require(self.grpo_subset_size >= 1, f"{key}.grpo_subset_size", "must be >= 1", self.grpo_subset_size)
        _require(self.system_prompt.strip() != "", f"{key}.system_prompt", "must not be empty", "")


@dataclass(frozen=True)
class ModelParams:
    name: str
    revision: str = "main"
    load_in_4bit: Literal["auto", True, False] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    trust_remote_code: bool = False

    def validate(self, key: str) -> None:
        _require(self.name.strip() != "", f"{key}.name", "must not be empty", self.name)


@dataclass(frozen=True)
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)

    def validate(self, key: str) -> None:
        _require(self.r >= 1, f"{key}.r", "must be >= 1", self.r)
        _require(self.alpha >= 1, f"{key}.alpha", "must be >= 1", self.alpha)
        _require(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must be in [0, 1)", self.dropout)
        _require(len(self.target_modules) > 0, f"{key}.target_modules", "must list at least one module", [])


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9

    def validate(self, key: str) -> None:
        _require(self.max_new_tokens >= 1, f"{key}.max_new_tokens", "must be >= 1", self.max_new_tokens)
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        _require(self.temperature > 0, f"{key}.temperature", "must be > 0", self.temperature)
        _require(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]", self.top_p)


@dataclass(frozen=True)
class BaselineParams:
    num_samples: int = 50

    def validate(self, key: str) -> None:
        _require(self.num_samples >= 1, f"{key}.num_samples", "must be >= 1", self.num_samples)


EvalParams = BaselineParams


@dataclass(frozen=True)
class SftParams:
    lr: float = 2e-4
    epochs: float = 1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"
    gradient_checkpointing: bool = False
    packing: bool = False
    length_window: int = 8
    sources: list[str] = field(default_factory=list)
    max_samples: int = 0
    max_steps: int = -1
    eval_samples: int = 32
    eval_steps: int = 10
    save_steps: int = 10
    resume: Literal["auto", "never"] = "auto"

    def validate(self, key: str) -> None:
        _require(self.lr > 0, f"{key}.lr", "must be > 0", self.lr)
        _require(self.epochs > 0, f"{key}.epochs", "must be > 0", self.epochs)
        _require(self.max_samples >= 0, f"{key}.max_samples", "must be >= 0 (0 = all)", self.max_samples)
        _require(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", "must be -1 (epochs decide) or >= 1",
                 self.max_steps)
        _require(self.eval_samples >= 1, f"{key}.eval_samples", "must be >= 1", self.eval_samples)
        _require(self.eval_steps >= 1, f"{key}.eval_steps", "must be >= 1", self.eval_steps)
        _require(self.save_steps >= 1, f"{key}.save_steps", "must be >= 1", self.save_steps)
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        _require(self.grad_accum >= 1, f"{key}.grad_accum", "must be >= 1", self.grad_accum)
        _require(self.length_window >= 1, f"{key}.length_window", "must be >= 1 (1 = random batches)",
                 self.length_window)
        _require(self.max_length >= 16, f"{key}.max_length", "must be >= 16", self.max_length)
        _require(0 <= self.warmup_ratio < 1, f"{key}.warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        _require(len(self.sources) > 0, f"{key}.sources", "must list at least one source", [])


@dataclass(frozen=True)
class RewardParams:
    """Weights of the GRPO reward components (0 = off) and the length reward's target range."""

    similarity: float = 1.0
    embedding: float = 0.0
    length: float = 0.5
    coherence: float = 0.5
    quality: float = 0.5
    safety: float = 1.0
    length_min_ratio: float = 0.5
    length_max_ratio: float = 1.5

    def validate(self, key: str) -> None:
        for name in ("similarity", "embedding", "length", "coherence", "quality", "safety"):
            _require(getattr(self, name) >= 0, f"{key}.{name}", "weights must be >= 0", getattr(self, name))
        _require(0 < self.length_min_ratio <= self.length_max_ratio, f"{key}.length_min_ratio",
                 "must be > 0 and <= length_max_ratio", self.length_min_ratio)


@dataclass(frozen=True)
class GrpoParams:
    lr: float = 1e-5
    epochs: float = 1
    batch_size: int = 4
    num_generations: int = 4
    max_completion_length: int = 64
    beta: float = 0.04
    temperature: float = 0.9
    max_steps: int = -1
    save_steps: int = 10
    resume: Literal["auto", "never"] = "auto"
    rewards: RewardParams = field(default_factory=RewardParams)

    def validate(self, key: str) -> None:
        _require(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", "must be -1 (epochs decide) or >= 1",
                 self.max_steps)
        _require(self.save_steps >= 1, f"{key}.save_steps", "must be >= 1", self.save_steps)
        _require(self.lr > 0, f"{key}.lr", "must be > 0", self.lr)
        _require(self.epochs > 0, f"{key}.epochs", "must be > 0", self.epochs)
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        # GRPO compares completions within a group: one completion has no relative advantage.
        _require(self.num_generations >= 2, f"{key}.num_generations", "must be >= 2", self.num_generations)
        _require(self.batch_size % self.num_generations == 0, f"{key}.batch_size",
                 f"must be a multiple of grpo.num_generations ({self.num_generations})", self.batch_size)
        _require(self.max_completion_length >= 1, f"{key}.max_completion_length", "must be >= 1",
                 self.max_completion_length)
        _require(self.beta >= 0, f"{key}.beta", "must be >= 0", self.beta)
        _require(self.temperature > 0, f"{key}.temperature", "must be > 0", self.temperature)


@dataclass(frozen=True)
class TrainParams:
    """How the sft and grpo stages are launched (meddialog/training/launch.py): one process, or one per GPU."""

    launcher: Literal["python", "torchrun", "accelerate"] = "python"
    accelerate_config: Literal["ddp", "zero2", "zero3", "fsdp"] = "ddp"
    nproc_per_node: int | Literal["auto"] = "auto"

    def validate(self, key: str) -> None:
        if self.nproc_per_node != "auto":
            _require(self.nproc_per_node >= 1, f"{key}.nproc_per_node", "must be >= 1 or 'auto'", self.nproc_per_node)
        _require(self.launcher != "python" or self.nproc_per_node in ("auto", 1), f"{key}.nproc_per_node",
                 "more than one process needs train.launcher torchrun or accelerate", self.nproc_per_node)


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "meddialog"
    log_models: bool = False

    def validate(self, key: str) -> None:
        _require(self.experiment.strip() != "", f"{key}.experiment", "must not be empty", self.experiment)


@dataclass(frozen=True)
class VerlSftParams:
    """verl SFT (`verl.trainer.sft_trainer`); batch sizes are global, over every GPU."""

    lr: float = 1e-4
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 1024
    max_steps: int = -1
    save_steps: int = 50
    eval_steps: int = 25

    def validate(self, key: str) -> None:
        _require(self.lr > 0, f"{key}.lr", "must be > 0", self.lr)
        _require(self.epochs >= 1, f"{key}.epochs", "must be >= 1", self.epochs)
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        _require(self.max_length >= 16, f"{key}.max_length", "must be >= 16", self.max_length)
        _require(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", "must be -1 (epochs decide) or >= 1",
                 self.max_steps)
        _require(self.save_steps >= 1, f"{key}.save_steps", "must be >= 1", self.save_steps)
        _require(self.eval_steps >= 1, f"{key}.eval_steps", "must be >= 1", self.eval_steps)


@dataclass(frozen=True)
class VerlGrpoParams:
    """verl GRPO (`verl.trainer.main_ppo algorithm.adv_estimator=grpo`)."""

    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 16
    micro_batch_size_per_gpu: int = 4
    num_generations: int = 4
    max_prompt_length: int = 512
    max_completion_length: int = 256
    beta: float = 0.04
    temperature: float = 0.9
    rollout: Literal["vllm", "sglang", "trtllm"] = "vllm"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    max_steps: int = -1
    save_steps: int = 50
    eval_steps: int = 25

    def validate(self, key: str) -> None:
        _require(self.lr > 0, f"{key}.lr", "must be > 0", self.lr)
        _require(self.epochs >= 1, f"{key}.epochs", "must be >= 1", self.epochs)
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1", self.batch_size)
        _require(self.micro_batch_size_per_gpu >= 1, f"{key}.micro_batch_size_per_gpu", "must be >= 1",
                 self.micro_batch_size_per_gpu)
        # GRPO compares completions within a group: one completion has no relative advantage.
        _require(self.num_generations >= 2, f"{key}.num_generations", "must be >= 2", self.num_generations)
        _require(self.max_prompt_length >= 16, f"{key}.max_prompt_length", "must be >= 16", self.max_prompt_length)
        _require(self.max_completion_length >= 1, f"{key}.max_completion_length", "must be >= 1",
                 self.max_completion_length)
        _require(self.beta >= 0, f"{key}.beta", "must be >= 0", self.beta)
        _require(self.temperature > 0, f"{key}.temperature", "must be > 0", self.temperature)
        _require(self.tensor_parallel_size >= 1, f"{key}.tensor_parallel_size", "must be >= 1",
                 self.tensor_parallel_size)
        _require(0 < self.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", "must be in (0, 1]",
                 self.gpu_memory_utilization)
        _require(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", "must be -1 (epochs decide) or >= 1",
                 self.max_steps)
        _require(self.save_steps >= 1, f"{key}.save_steps", "must be >= 1", self.save_steps)
        _require(self.eval_steps >= 1, f"{key}.eval_steps", "must be >= 1", self.eval_steps)


@dataclass(frozen=True)
class VerlParams:
    """The optional verl pipeline (pipelines/verl/dvc.yaml): where verl runs and on how many GPUs."""

    python: str = ".venv-verl/bin/python"
    nnodes: int = 1
    n_gpus_per_node: int = 1
    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    sft: VerlSftParams = field(default_factory=VerlSftParams)
    grpo: VerlGrpoParams = field(default_factory=VerlGrpoParams)

    @property
    def n_gpus(self) -> int:
        return self.nnodes * self.n_gpus_per_node

    def validate(self, key: str) -> None:
        _require(self.python.strip() != "", f"{key}.python", "must not be empty", self.python)
        _require(self.nnodes >= 1, f"{key}.nnodes", "must be >= 1", self.nnodes)
        _require(self.n_gpus_per_node >= 1, f"{key}.n_gpus_per_node", "must be >= 1", self.n_gpus_per_node)
        gpus = f"the GPU count ({key}.nnodes × {key}.n_gpus_per_node = {self.n_gpus})"
        # verl splits each global batch evenly over the data-parallel ranks (one per GPU).
        _require(self.sft.batch_size % self.n_gpus == 0, f"{key}.sft.batch_size", f"must be a multiple of {gpus}",
                 self.sft.batch_size)
        # verl's validate_config: every rollout batch (prompts × completions) is split evenly over the GPUs.
        sequences = self.grpo.batch_size * self.grpo.num_generations
        _require(sequences % self.n_gpus == 0, f"{key}.grpo.batch_size",
                 f"batch_size × num_generations = {sequences} sequences per step must be divisible by {gpus}",
                 self.grpo.batch_size)
        # Each rollout engine spans tensor_parallel_size GPUs; verl needs a whole number of engines.
        _require(self.n_gpus % self.grpo.tensor_parallel_size == 0, f"{key}.grpo.tensor_parallel_size",
                 f"must divide {gpus}", self.grpo.tensor_parallel_size)


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    model: ModelParams
    lora: LoraParams
    generation: GenerationParams
    baseline: BaselineParams
    sft: SftParams
    grpo: GrpoParams
    eval: EvalParams
    mlflow: MlflowParams
    train: TrainParams = field(default_factory=TrainParams)  # optional: without it, one process
    verl: VerlParams = field(default_factory=VerlParams)  # optional: only the verl pipeline reads it

    def validate(self, key: str) -> None:
        _require(self.seed >= 0, "seed", "must be >= 0", self.seed)
        unknown = [s for s in self.sft.sources if s not in self.data.sources]
        _require(not unknown, "sft.sources", f"names no source in data.sources ({', '.join(self.data.sources)})",
                 unknown)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read, type-check and validate params.yaml; raise ParamsError naming the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the repository root")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return _build(Params, raw, "")


def set_dotted(params: dict, overrides: dict[str, Any]) -> None:
    """Apply `{"sft.lr": 1e-4, ...}` to a loaded params mapping in place, as `dvc exp run -S` does."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value


def read_yaml(path: Path) -> Any:
    """YAML 1.2 (ruamel), as DVC reads and writes params.yaml."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return _plain(YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8")))
    except YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, raw: Any, key: str) -> Any:
    label = key or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{label}: must be a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{_join(key, close[0])}'?" if close else f"; known keys: {', '.join(fields)}"
            raise ParamsError(f"{_join(key, name)}: unknown key{hint}")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{_join(key, name)}: missing required key")
    obj = cls(**values)
    obj.validate(key)
    return obj


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, key)
        for option in options:
            try:
                return _convert(option, value, key)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: must be {' or '.join(map(_expected, options))}, got {_describe(value)}")
    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        strings = [a for a in args if isinstance(a, str)]
        close = difflib.get_close_matches(value, strings, n=1) if isinstance(value, str) else []
        hint = f"; did you mean {_show(close[0])}?" if close else ""
        raise ParamsError(f"{key}: must be one of {', '.join(map(_show, args))}, got {_show(value)}{hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: must be a list, got {_describe(value)}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: must be a mapping, got {_describe(value)}")
        return {k: _convert(args[1], v, _join(key, k)) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported params type {hint!r} for {key}")
    raise ParamsError(f"{key}: must be {_type_name(hint)}, got {_describe(value)}")


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ParamsError(f"{key}: {message} (got {_show(value)})")


def _is_safe_name(name: str) -> bool:
    return name.replace("_", "").replace("-", "").isalnum()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _expected(hint: Any) -> str:
    """One alternative of a union, as the error message names it: 'auto', an integer, ..."""
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(_show, typing.get_args(hint)))
    return _type_name(hint)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
