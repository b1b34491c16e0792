"""Around verl's own runs: where checkpoints go, the model GRPO starts from, and the final export.

    models/verl/checkpoints/<stage>-<fingerprint>/   verl's global_step_<n>/ (git-ignored, not a DVC
        output: a fresh clone must not look "changed" for lack of them, as with the TRL stages).
        The fingerprint covers the params and inputs of the run, so rerunning with the same ones
        resumes (trainer.resume_mode=auto) and changed ones start afresh.
    models/verl/checkpoints/grpo-<fingerprint>/init/  models/base + models/sft merged: GRPO's start.
    models/verl/<stage>/                          the export (DVC output): verl's model merger writes
        the starting weights as a Hugging Face model plus lora_adapter/; we complete the adapter
        (lora_alpha, lineage.json), so meddialog.modeling.loading.load_model and tools.evaluate rebuild the
        trained policy from `models/verl/<stage>/lora_adapter`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from meddialog import atomic
from meddialog.errors import UserError
from meddialog.params import LoraParams, ModelParams, Params
from meddialog.paths import VERL_CHECKPOINT_ROOT
from meddialog.verl.launch import Expanded, export_command, run

log = logging.getLogger(__name__)

CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"  # verl writes it beside global_step_<n>/
ADAPTER_DIR = "lora_adapter"  # where verl's model merger puts a LoRA checkpoint's adapter


def run_dir(stage: str, params: tuple, inputs: list[Path]) -> Path:
    """This run's checkpoint directory: <stage>-<hash of its params and input files>."""
    from meddialog.digests import fingerprint

    return VERL_CHECKPOINT_ROOT / f"{stage}-{fingerprint(*params, inputs_digest(inputs))}"


def inputs_digest(paths: list[Path]) -> str:
    """Hash of the files' contents (every file under a directory); a missing path hashes as missing."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file).encode())
            digest.update(file.read_bytes() if file.is_file() else b"<missing>")
    return digest.hexdigest()[:12]


def checkpoint_arg(run: Path, actor: bool, known: bool) -> str:
    """The last checkpoint's directory as the model merger's --local_dir.

    PPO saves the policy under global_step_<n>/actor, SFT directly in global_step_<n>. Before
    training (`known=False`, the dry run) the step is not known yet: the argument then reads it
    from verl's tracker file when the printed command is run.
    """
    suffix = "/actor" if actor else ""
    if not known:
        return Expanded(f"{run}/global_step_$(cat {run}/{CHECKPOINT_TRACKER}){suffix}")
    tracker = run / CHECKPOINT_TRACKER
    if not tracker.is_file():
        raise UserError(f"{run} holds no checkpoint ({CHECKPOINT_TRACKER} is missing): verl saved none")
    return f"{run}/global_step_{int(tracker.read_text().strip())}{suffix}"


def merge_sft(sft_dir: Path, model: ModelParams, out_dir: Path) -> None:
    """models/base with the SFT adapter chain merged in, saved as a plain Hugging Face model.

    GRPO then trains a new LoRA on top of it, as the TRL grpo stage does. Full precision (never 4-bit),
    since verl and its rollout engine load these weights as they are; merged in a CPU process of its
    own (meddialog/modeling/merge.py), so no GPU memory is held here while verl and vLLM start.
    """
    from meddialog.modeling.loading import LINEAGE_FILE, model_chain, write_lineage
    from meddialog.modeling.merge import merge_in_subprocess
    from meddialog.modeling.precision import resolve

    # lineage.json is written last: a merge killed before it is redone (merge_chain replaces out_dir)
    if (out_dir / LINEAGE_FILE).is_file():
        log.info("reusing the merged SFT model in %s", out_dir)
        return
    base, adapters = model_chain(sft_dir)
    # model.dtype: auto = bfloat16 on a CUDA machine (verl trains and rolls out in bf16), float32 on CPU
    merge_in_subprocess(base, adapters, resolve(model).dtype, out_dir, model.trust_remote_code)
    write_lineage(out_dir, base, adapters, merged=True)
    log.info("merged %s into %s", " + ".join(map(str, (base, *adapters))), out_dir)


def export(params: Params, root: Path, run_path: Path, actor: bool, target: Path, started_from: dict) -> Path:
    """The last checkpoint in `run_path` → `target` (verl's model merger, then `finish_export`)."""
    # The stage's output, rebuilt whole: the merger would leave a previous export's extra files.
    shutil.rmtree(target, ignore_errors=True)
    run(export_command(params, root, checkpoint_arg(root / run_path, actor=actor, known=True), target),
        "verl's model merger")
    return finish_export(target, params.lora, started_from)


def finish_export(target: Path, lora: LoraParams, started_from: dict) -> Path:
    """Complete verl's exported adapter in `target`/lora_adapter and return its path.

    verl's model merger writes `lora_alpha: 0` into adapter_config.json unless the checkpoint holds
    a lora_train_meta.json (verl <= 0.7 always wrote 0; 0.8+ reads that file, which 0.9.1's FSDP
    checkpoints include, and falls back to 0 without it), and peft scales an adapter by alpha / r:
    with 0 the trained adapter would change nothing. Our lora.alpha is what training used. lineage.json names `target` itself as the base (the merger wrote the
    starting weights there), so the adapter loads like any adapter of this pipeline.
    """
    from meddialog.modeling.loading import write_lineage

    adapter = target / ADAPTER_DIR
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{target}: verl's export has no {ADAPTER_DIR}/adapter_config.json (was LoRA on?)")
    config = json.loads(config_file.read_text())
    if config.get("lora_alpha") != lora.alpha:
        log.info("adapter_config.json: lora_alpha %s -> %s (lora.alpha)", config.get("lora_alpha"), lora.alpha)
    config["lora_alpha"] = lora.alpha
    atomic.write_json(config_file, config, sort_keys=True)
    write_lineage(adapter, target, started_from=started_from)
    return adapter
