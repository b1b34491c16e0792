"""The export's model card (models/export/README.md), written from the pipeline's own files.

Hugging Face model-card format: YAML front matter (base_model, license, datasets, tags, pipeline_tag)
and a body saying how the model was made (data and record counts from metrics/data.json, the params
that matter, steps from metrics/*_train.json, hardware and library versions from metrics/provenance/,
the export's lineage), its evaluation (metrics/{baseline,sft,grpo}.json), the command that reproduces
it, its intended use, limitations and a medical disclaimer. Every number comes from a file; nothing
here is to be edited by hand (rerun `dvc repro export`).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from meddialog.evaluation.report import REPORT_METRICS
from meddialog.params import Params, read_yaml
from meddialog.paths import METRICS_DIR

SAMPLE_DIR = "data/sample"
SAMPLE_LICENSE = "CC BY 4.0 (MedDialog sample dataset, data/sample/README.md)"
MODELS = {"baseline": "base", "sft": "sft", "grpo": "grpo"}  # metrics file → column
STAGES_IN = {"base": (), "sft": ("sft",), "grpo": ("sft", "grpo")}
DISCLAIMER = ("**Not a medical device and not medical advice.** This model generates text that can be wrong, "
              "incomplete or unsafe. It has not been reviewed by clinicians. Do not use it to diagnose, treat or "
              "triage anyone; in an emergency call your local emergency number.")


def model_card(params: Params, lineage: dict, base: dict, metrics_dir: Path = METRICS_DIR) -> str:
    """The card's text. `base`: {"id", "license"} of the base model (see `base_identity`), either may be None."""
    model = lineage["model"]
    front = {
        "base_model": base.get("id"),
        "license": base.get("license") or "other",
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["medical", "dialogue", "lora", "peft", "trl", *STAGES_IN[model], "meddialog"],
        "datasets": [s.path[3:] for s in params.data.sources.values() if s.path.startswith("hf:")] or None,
    }
    front = {k: v for k, v in front.items() if v is not None}
    title = f"MedDialog {model}: {base.get('id') or lineage['base_model']} for medical dialogue"
    lines = ["---", _yaml_text(front), "---", "", f"# {title}", "", f"> {DISCLAIMER}", ""]
    lines += _summary(params, lineage, base)
    lines += _data(params, metrics_dir)
    lines += _training(params, model, metrics_dir)
    lines += _evaluation(metrics_dir)
    lines += _usage()
    lines += _reproduce()
    lines += _limits()
    return "\n".join(lines) + "\n"


def _summary(params: Params, lineage: dict, base: dict) -> list[str]:
    chain = " → ".join([lineage["base_model"], *(a["path"] for a in lineage["adapters"])])
    adapters = "; ".join(f"{a['path']}: LoRA r {a['r']}, alpha {a['lora_alpha']}" for a in lineage["adapters"])
    source = (lineage.get("base_source") or {}).get("name", lineage["base_model"])
    return ["## Model", "",
            f"- Base model: {base.get('id') or source} (loaded from `{source}`), licence "
            f"{base.get('license') or 'unknown: see the base model card'}.",
            f"- Chain merged into this directory: {chain}, in {lineage['dtype']} on the CPU"
            + (f" ({adapters}); the merge changed {lineage['tensors_changed']} of {lineage['tensors_compared']} "
               "weight tensors." if lineage["adapters"] else "; no adapter (the base model as the pipeline ran it)."),
            f"- {lineage['parameters'] / 1e6:.1f}M parameters; safetensors weights, tokenizer with its chat template, "
            "and generation_config.json with every stop id (EOS and end-of-turn) and the pipeline's decoding "
            f"({_decoding(params)}).",
            f"- System prompt used in training and evaluation: \"{params.data.system_prompt}\"", ""]


def _data(params: Params, metrics_dir: Path) -> list[str]:
    counts = _json(metrics_dir / "data.json")
    lines = ["## Training data", "", "| source | path | licence | records kept | train / val / test |", "|---|---|---|---|---|"]
    for name, source in params.data.sources.items():
        split = " / ".join(str(int(counts.get(f"{name}.{s}", 0))) for s in ("train", "val", "test"))
        lines.append(f"| {name} | `{source.path}` | {_data_license(source.path)} | "
                     f"{int(counts.get(f'{name}.kept', 0))} of {int(counts.get(f'{name}.in', 0))} | {split} |")
    lines += ["", f"SFT trained on {', '.join(params.sft.sources)}; GRPO prompts: a seeded subset of "
                  f"{params.data.grpo_subset_size} training conversations per source. Dropped records are counted "
                  "by reason in metrics/data.json.", ""]
    return lines


def _training(params: Params, model: str, metrics_dir: Path) -> list[str]:
    if model == "base":
        return []
    lora = params.lora
    lines = ["## Training", "",
             f"LoRA r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, on {', '.join(lora.target_modules)}.", ""]
    sft, grpo = params.sft, params.grpo
    recipes = {
        "sft": (f"TRL SFTTrainer, loss on assistant tokens: lr {sft.lr}, batch {sft.batch_size} × grad accum "
                f"{sft.grad_accum}, max length {sft.max_length}, {sft.scheduler} schedule, warmup {sft.warmup_ratio}"),
        "grpo": (f"TRL GRPOTrainer on the merged SFT model: lr {grpo.lr}, {grpo.num_generations} completions per "
                 f"prompt, batch {grpo.batch_size}, completions up to {grpo.max_completion_length} tokens, beta "
                 f"{grpo.beta}, temperature {grpo.temperature}; reward weights "
                 + ", ".join(f"{k} {v}" for k, v in _reward_weights(params).items())),
    }
    lines += ["| stage | recipe | steps | result | hardware |", "|---|---|---|---|---|"]
    for stage in STAGES_IN[model]:
        summary = _json(metrics_dir / f"{stage}_train.json")
        hardware = _hardware(_json(metrics_dir / "provenance" / f"{stage}_train.json"))
        result = (f"train loss {summary.get('train_loss', float('nan')):.4f}, eval loss "
                  f"{summary.get('eval_loss_start', float('nan')):.4f} → {summary.get('eval_loss', float('nan')):.4f}"
                  if stage == "sft" else
                  f"mean reward {summary.get('reward_first_quarter', float('nan')):.3f} (first quarter) → "
                  f"{summary.get('reward_last_quarter', float('nan')):.3f} (last quarter)")
        lines.append(f"| {stage} | {recipes[stage]} | {int(summary.get('steps', 0))} | {result} | {hardware} |")
    return lines + [""]


def _evaluation(metrics_dir: Path) -> list[str]:
    results = {column: _json(metrics_dir / f"{name}.json") for name, column in MODELS.items()}
    results = {k: v for k, v in results.items() if v}
    if not results:
        return []
    count = int(next(iter(results.values())).get("num_samples", 0))
    lines = ["## Evaluation", "",
             f"Greedy answers to {count} held-out test conversations, the same ones for every model "
             "(metrics/report.md has examples). ROUGE and BLEU measure overlap with one reference answer and "
             "similarity the MiniLM cosine to it: none of them measures medical correctness or safety.", "",
             "| metric | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for metric in REPORT_METRICS:
        if metric != "num_samples":
            lines.append(f"| {metric} | " + " | ".join(f"{r.get(metric, float('nan')):.4f}" for r in results.values()) + " |")
    return lines + [""]


def _usage() -> list[str]:
    return ["## Use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'tokenizer = AutoTokenizer.from_pretrained("models/export")',
            'model = AutoModelForCausalLM.from_pretrained("models/export")',
            'messages = [{"role": "system", "content": SYSTEM_PROMPT},  # the system prompt above',
            '            {"role": "user", "content": "I have had a headache for three days. What should I do?"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
            "output = model.generate(**inputs)  # generation_config.json: stop ids, length, decoding",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```", "",
            "Or chat in a terminal: `python -m meddialog.chat --model-path models/export` (in the MedDialog repository).",
            ""]


def _reproduce() -> list[str]:
    return ["## Reproduce", "", "```bash", reproduce_command(), "```", "",
            "On the CPU (float32) the rerun gives the same weights, metrics and answers; on GPUs, numbers move "
            "within floating-point noise.", ""]


def _limits() -> list[str]:
    return ["## Intended use", "",
            "Research and demonstration of a reproducible fine-tuning pipeline for medical dialogue: "
            "comparing recipes, testing serving and evaluation tooling. Not for patients, clinicians or any "
            "decision about anyone's health.", "",
            "## Limitations", "",
            "- Trained on a small dataset for few steps: it learns the answer style (length, hedging, referral "
            "phrases) far more than medical knowledge, and it can state false facts fluently.",
            "- English only; no review by clinicians; no evaluation of factual accuracy or safety beyond the "
            "overlap metrics above.",
            "- Answers are cut at the generation length in generation_config.json.", "",
            "## Disclaimer", "", DISCLAIMER, ""]


def reproduce_command() -> str:
    """The commands that rebuild this export: the git revision it was made from, and the params that
    differ from that revision's params.yaml as `dvc exp run -S` flags (what `dvc exp run` was given)."""
    revision = _git("rev-parse", "HEAD")
    if revision is None:
        return "make repro   # run in the MedDialog repository this export came from (no git history found)"
    origin = _git("remote", "get-url", "origin") or "<this repository's URL>"
    committed = _git("show", "HEAD:params.yaml")
    changed = _changed_params(_yaml_load(committed) if committed else {}, read_yaml(Path("params.yaml")))
    run = "dvc exp run " + " ".join(f"-S '{k}={json.dumps(v)}'" for k, v in changed.items()) if changed else "make repro"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!params.yaml", ":!dvc.lock", ":!metrics")
    lines = [f"git clone {origin} meddialog && cd meddialog", f"git checkout {revision}",
             "make setup" if changed else None, run]
    if dirty:
        lines.append("# note: the export was made with uncommitted code changes; this reruns the committed code")
    return "\n".join(line for line in lines if line)


def base_identity(source: dict | None, hub_timeout_s: float = 5.0) -> dict:
    """{"id", "license"} of the base model for the front matter: from a GGUF file's metadata, a local
    directory's README.md front matter, or the Hugging Face hub (None where none of these says)."""
    from meddialog.modeling.loading import resolve_gguf

    name = (source or {}).get("name", "")
    gguf = resolve_gguf(name) if name else None
    if gguf is not None:
        return _gguf_identity(gguf)
    if Path(name).is_dir():
        return {"id": None, "license": _front_matter(Path(name) / "README.md").get("license")}
    if name:
        return {"id": name, "license": _hub_license(name, (source or {}).get("revision"), hub_timeout_s)}
    return {"id": None, "license": None}


def _gguf_identity(gguf: Path) -> dict:
    """SmolLM2-135M-Instruct.Q4_1.gguf by HuggingFaceTB → HuggingFaceTB/SmolLM2-135M-Instruct, and its licence."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def text(key: str) -> str | None:
        return fields[key].contents() if key in fields else None

    organization = text("general.organization")
    stem = gguf.name.removesuffix(".gguf").rsplit(".", 1)[0]
    return {"id": f"{organization}/{stem}" if organization else None, "license": text("general.license")}


def _hub_license(model_id: str, revision: str | None, timeout_s: float) -> str | None:
    try:
        from huggingface_hub import model_info

        card = model_info(model_id, revision=revision, timeout=timeout_s).card_data
        return card.get("license") if card else None
    except Exception:  # offline, gated or unknown: the card says "see the base model card"
        return None


def _front_matter(readme: Path) -> dict:
    if not readme.is_file():
        return {}
    parts = readme.read_text(encoding="utf-8").split("---")
    return (_yaml_load(parts[1]) or {}) if len(parts) > 2 and not parts[0].strip() else {}


def _data_license(path: str) -> str:
    if path.startswith(SAMPLE_DIR + "/"):
        return SAMPLE_LICENSE
    if path.startswith("hf:"):
        return f"see the dataset card of {path[3:]}"
    return "unknown (a local file)"


def _changed_params(committed: dict, current: dict, prefix: str = "") -> dict:
    changed = {}
    for key in sorted(set(committed) | set(current)):
        old, new, dotted = committed.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(old, dict) or isinstance(new, dict):  # a section: its leaves, as -S takes them
            changed.update(_changed_params(old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {},
                                           dotted + "."))
        elif old != new:
            changed[dotted] = new
    return changed


def _reward_weights(params: Params) -> dict:
    from meddialog.training.rewards import REWARDS

    return {name: getattr(params.grpo.rewards, name) for name in REWARDS if getattr(params.grpo.rewards, name)}


def _decoding(params: Params) -> str:
    g = params.generation
    mode = f"sampling at temperature {g.temperature}, top-p {g.top_p}" if g.do_sample else "greedy"
    return f"{mode}, up to {g.max_new_tokens} new tokens"


def _hardware(provenance: dict) -> str:
    if not provenance:
        return "not recorded"
    versions = provenance.get("versions", {})
    return (f"{provenance.get('processes', 1)} × {provenance.get('device')}, {provenance.get('dtype')}, "
            f"quantization {provenance.get('quantization')}; torch {versions.get('torch')}, "
            f"transformers {versions.get('transformers')}, trl {versions.get('trl')}, peft {versions.get('peft')}")


def _yaml_text(value: dict) -> str:
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    writer = YAML(typ="safe", pure=True)
    writer.default_flow_style = False
    writer.dump(value, out)
    return out.getvalue().strip()


def _yaml_load(text: str):
    """YAML 1.2 (ruamel), as DVC writes params.yaml."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
