"""Tutorial step 5A (`5_train_sft_verl.py`): SFT with verl, for several GPUs or nodes.

    python -m stages.verl_sft --dry-run        # print the commands it would run, and exit
    dvc repro pipelines/verl/dvc.yaml:verl_sft
    dvc exp run pipelines/verl/dvc.yaml:verl_sft -S verl.n_gpus_per_node=8 -S verl.sft.batch_size=64

verl's SFT trainer on data/verl/sft_{train,val}.parquet (whole dialogues; verl's MultiTurnSFTDataset
puts the loss on every assistant turn), from models/base, with a LoRA adapter (`lora` params).
One node: `torchrun -m verl.trainer.sft_trainer`; several (`verl.nnodes` > 1):
`verl.trainer.sft_trainer_ray` on a Ray cluster. verl's model merger then exports the last
checkpoint to models/verl/sft (meddialog/verl/export.py). Needs CUDA GPUs and verl's environment
(`make setup-verl`); losses go to MLflow (experiment `mlflow.experiment`, run `verl_sft`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from meddialog import cli
from meddialog.params import load_params
from meddialog.paths import BASE_DIR, VERL_DATA_DIR, VERL_SFT_DIR

log = logging.getLogger("verl_sft")



def main(argv: list[str] | None = None) -> None:
    dry_run = parse_args(argv).dry_run
    params = load_params()

    from meddialog.errors import UserError
    from meddialog.verl.export import checkpoint_arg, export, run_dir
    from meddialog.verl.launch import export_command, run, sft_command

    root = Path.cwd()
    data = [VERL_DATA_DIR / "sft_train.parquet", VERL_DATA_DIR / "sft_val.parquet"]
    verl = params.verl
    run_path = run_dir("sft", (verl.sft, verl.nnodes, verl.n_gpus_per_node, params.lora, params.seed,
                               params.model.trust_remote_code),
                       [*data, BASE_DIR / "config.json", BASE_DIR / "source.json"])
    train = sft_command(params, root, BASE_DIR, run_path)
    if dry_run:
        print(train.shell())
        print(export_command(params, root, checkpoint_arg(root / run_path, actor=False, known=False), VERL_SFT_DIR).shell())
        print(f"# then {VERL_SFT_DIR}/lora_adapter: lora_alpha {params.lora.alpha} (lora.alpha) and lineage.json")
        return

    missing = [str(p) for p in (*data, BASE_DIR / "config.json") if not p.is_file()]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: run the main pipeline first (`dvc repro process base_model`)")
    run(train, "verl SFT")
    adapter = export(params, root, run_path, actor=False, target=VERL_SFT_DIR, started_from={"base_model": str(BASE_DIR)})
    log.info("wrote %s (evaluate: python -m tools.evaluate --model-path %s ...)", adapter, adapter)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.verl_sft", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return parser.parse_args(argv)


if __name__ == "__main__":
    cli.run(main)
