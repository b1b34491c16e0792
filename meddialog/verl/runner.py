"""What stages.verl_sft and stages.verl_grpo do alike, from their recipe (`VerlRecipe`).

The run's checkpoint directory comes from the fingerprint of its params and inputs
(meddialog/verl/export.py `run_dir`); `--dry-run` prints the commands instead of running them;
missing inputs stop the stage with one line before anything starts; then verl trains (GRPO from
models/base with the SFT adapter merged in) and its model merger exports the last checkpoint.
Nothing here imports verl: it runs in verl's own environment, as subprocesses.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meddialog.errors import UserError
from meddialog.params import Params, VerlGrpoParams, VerlSftParams
from meddialog.paths import BASE_DIR
from meddialog.verl.export import checkpoint_arg, export, merge_sft, run_dir
from meddialog.verl.launch import Command, export_command, run


@dataclass(frozen=True)
class VerlRecipe:
    """One verl stage: what it trains on, how verl is launched, and where the result goes."""

    stage: str  # "sft" | "grpo": the checkpoint directory's prefix, "verl SFT" in messages
    settings: VerlSftParams | VerlGrpoParams  # verl.<stage>, part of the run's fingerprint
    data: tuple[Path, ...]  # verl's parquet files (data/verl)
    command: Callable[[Params, Path, Path, Path], Command]  # (params, root, start model, run dir) -> launch
    target: Path  # the export, the stage's DVC output
    actor: bool  # verl's PPO trainer saves the policy under global_step_<n>/actor, its SFT trainer not
    missing_hint: str  # the `dvc repro` that makes missing inputs
    sft_adapter: Path | None = None  # merged into models/base before training: the policy GRPO starts from


def parse_args(stage_module: str, doc: str, argv: list[str] | None) -> argparse.Namespace:
    """A verl stage's command line: `--dry-run`, described by the first line of the stage's docstring."""
    parser = argparse.ArgumentParser(prog=f"python -m {stage_module}", description=doc.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return parser.parse_args(argv)


def run_recipe(recipe: VerlRecipe, params: Params, dry_run: bool) -> None:
    log = logging.getLogger(f"verl_{recipe.stage}")
    root = Path.cwd()
    verl = params.verl
    upstream = (recipe.sft_adapter,) if recipe.sft_adapter else ()
    run_path = run_dir(recipe.stage, (recipe.settings, verl.nnodes, verl.n_gpus_per_node, params.lora, params.seed,
                                      params.model.trust_remote_code),
                       [*recipe.data, BASE_DIR / "config.json", BASE_DIR / "source.json", *upstream])
    start_model = run_path / "init" if recipe.sft_adapter else BASE_DIR
    train = recipe.command(params, root, start_model, run_path)
    if dry_run:
        if recipe.sft_adapter:
            print(f"# {BASE_DIR} + {recipe.sft_adapter} merged into {root / start_model} (meddialog.verl.export.merge_sft)")
        print(train.shell())
        checkpoint = checkpoint_arg(root / run_path, actor=recipe.actor, known=False)
        print(export_command(params, root, checkpoint, recipe.target).shell())
        print(f"# then {recipe.target}/lora_adapter: lora_alpha {params.lora.alpha} (lora.alpha) and lineage.json")
        return

    required = [*recipe.data, BASE_DIR / "config.json", *(p / "adapter_config.json" for p in upstream)]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: run the main pipeline first (`{recipe.missing_hint}`)")
    if recipe.sft_adapter:
        merge_sft(recipe.sft_adapter, params.model, start_model)
    run(train, f"verl {recipe.stage.upper()}")
    started_from = {"base_model": str(BASE_DIR), **({"adapters": [str(p) for p in upstream]} if upstream else {})}
    adapter = export(params, root, run_path, actor=recipe.actor, target=recipe.target, started_from=started_from)
    log.info("wrote %s (evaluate: python -m tools.evaluate --model-path %s ...)", adapter, adapter)
