"""Where and in what precision a model runs (device, compute dtype, 4-bit NF4), and the record of it.

One decision (`resolve`) for every stage that loads a model. It is written beside every adapter
(lineage.json: evaluation then loads an adapter in the precision it was trained in) and beside every
metrics file (metrics/provenance/*.json and MLflow tags), so a CPU float32 result and a GPU 4-bit
result are never diffed as if they were comparable.

4-bit is bitsandbytes NF4 (double quantization), on CUDA and on CPU alike: bitsandbytes 0.50 runs NF4
forward, QLoRA backward and dequantization on CPU (tests/test_quantized.py), so `load_in_4bit: true`
means 4-bit everywhere and never a silent float32 fallback. `auto` quantizes on CUDA only, which
keeps the default CPU run (and its committed metrics) in float32.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meddialog import atomic
from meddialog.errors import UserError
from meddialog.params import ModelParams
from meddialog.paths import PROVENANCE_DIR

# the libraries whose versions change the numbers (kernels, trainers, adapter code, quantization)
VERSIONED = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate")


@dataclass(frozen=True)
class Precision:
    device: str          # "cuda" or "cpu"
    dtype: str           # compute dtype (and LoRA merges): "float32" or "bfloat16"
    load_in_4bit: bool   # NF4 weights (bitsandbytes)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def quantization(self) -> str:
        return f"bitsandbytes nf4 (double quant, {self.dtype} compute)" if self.load_in_4bit else "none"

    def describe(self) -> str:
        return f"{'4-bit NF4 weights, ' if self.load_in_4bit else ''}{self.dtype} on {self.device}"


def resolve(model: ModelParams, load_in_4bit: bool | str | None = None) -> Precision:
    """This machine's precision for `model.*`; `load_in_4bit` overrides `model.load_in_4bit` (an
    adapter's recorded training precision)."""
    import torch

    cuda = torch.cuda.is_available()
    wanted = model.load_in_4bit if load_in_4bit is None else load_in_4bit
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if wanted is True and not has_bnb:
        raise UserError("model.load_in_4bit is true but bitsandbytes is not installed "
                        "(`pip install bitsandbytes==0.50.2`, see requirements.txt)")
    four_bit = wanted is True or (wanted == "auto" and cuda and has_bnb)
    dtype = model.dtype if model.dtype != "auto" else ("bfloat16" if cuda else "float32")
    return Precision(device="cuda" if cuda else "cpu", dtype=dtype, load_in_4bit=four_bit)


def load_kwargs(precision: Precision) -> dict[str, Any]:
    """`from_pretrained` arguments: dtype, placement, and the 4-bit config when quantizing."""
    import torch

    kwargs: dict[str, Any] = {"dtype": precision.torch_dtype}
    if precision.device == "cuda":
        from transformers.integrations import is_deepspeed_zero3_enabled

        # ZeRO-3 places (partitions) the weights itself while loading and refuses a device_map; everything
        # else loads onto this process's GPU (set by the trainer arguments under torchrun / accelerate).
        if not is_deepspeed_zero3_enabled():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    elif precision.load_in_4bit:
        kwargs["device_map"] = {"": "cpu"}  # bitsandbytes quantizes while placing the weights
    if precision.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=precision.torch_dtype,
            # the same packed bits in a bfloat16 container: FSDP and ZeRO-3 can only shard 4-bit weights
            # stored in the dtype of the rest of the model
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    return kwargs


def library_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(precision: Precision, **details: Any) -> dict[str, Any]:
    """What produced a result: device (and GPU name), dtype, quantization, library versions."""
    import torch

    device = precision.device
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})"
    return {"device": device, "dtype": precision.dtype, "quantization": precision.quantization,
            "versions": library_versions(), **details}


def write_provenance(name: str, record: dict[str, Any], run=None, out_dir: Path = PROVENANCE_DIR) -> Path:
    """metrics/provenance/<name>.json (strings: not a DVC metric, so `dvc metrics diff` never mistakes
    it for a score), and the same as `provenance.*` tags of the MLflow run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    atomic.write_json(path, record, sort_keys=True)
    if run is not None:
        run.set_tags({f"provenance.{k}": str(v) for k, v in _flat(record).items()})
    return path


def as_record(precision: Precision) -> dict[str, Any]:
    return asdict(precision)


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
