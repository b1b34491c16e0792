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
This file is the recipe; meddialog/verl/runner.py carries it out as it does verl_grpo's (run
directory, --dry-run, input checks, launch, export).
"""
from __future__ import annotations

from meddialog import cli
from meddialog.params import load_params
from meddialog.paths import VERL_DATA_DIR, VERL_SFT_DIR
from meddialog.verl.launch import sft_command
from meddialog.verl.runner import VerlRecipe, parse_args, run_recipe


def main(argv: list[str] | None = None) -> None:
    dry_run = parse_args("stages.verl_sft", __doc__, argv).dry_run
    params = load_params()

    run_recipe(VerlRecipe(stage="sft", settings=params.verl.sft,
                          data=(VERL_DATA_DIR / "sft_train.parquet", VERL_DATA_DIR / "sft_val.parquet"),
                          command=sft_command, target=VERL_SFT_DIR, actor=False,
                          missing_hint="dvc repro process base_model"),
               params, dry_run)


if __name__ == "__main__":
    cli.run(main)
