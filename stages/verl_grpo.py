"""Tutorial step 5B (`6_train_grpo_verl.py`): GRPO with verl on Ray, for several GPUs or nodes.

    python -m stages.verl_grpo --dry-run       # print the commands it would run, and exit
    dvc repro pipelines/verl/dvc.yaml:verl_grpo
    dvc exp run pipelines/verl/dvc.yaml:verl_grpo -S verl.n_gpus_per_node=2 -S verl.grpo.num_generations=8

`python -m verl.trainer.main_ppo` with configs/verl/grpo.yaml (adv_estimator=grpo) on
data/verl/rl_{train,val}.parquet. The policy starts from models/base with the SFT adapter
(models/sft) merged in, and trains a new LoRA adapter on top, as the TRL grpo stage does. For each
prompt the rollout engine (vLLM, SGLang or TensorRT-LLM: `verl.grpo.rollout`) samples
`verl.grpo.num_generations` answers; verl's reward manager scores each with our
`meddialog.verl.reward.compute_score` (weights in `grpo.rewards`), so verl and TRL optimise the same
reward. KL is a loss term against the starting policy (`verl.grpo.beta`), not a reward penalty.
verl's model merger then exports the last checkpoint to models/verl/grpo (meddialog/verl/export.py).
Needs CUDA GPUs, verl's environment (`make setup-verl`) and the rollout engine (docs/scaling.md, 'What needs what').
This file is the recipe; meddialog/verl/runner.py carries it out as it does verl_sft's (run
directory, --dry-run, input checks, the SFT merge, launch, export).
"""
from __future__ import annotations

from meddialog import cli
from meddialog.params import load_params
from meddialog.paths import SFT_DIR, VERL_DATA_DIR, VERL_GRPO_DIR
from meddialog.verl.launch import grpo_command
from meddialog.verl.runner import VerlRecipe, parse_args, run_recipe


def main(argv: list[str] | None = None) -> None:
    dry_run = parse_args("stages.verl_grpo", __doc__, argv).dry_run
    params = load_params()

    run_recipe(VerlRecipe(stage="grpo", settings=params.verl.grpo,
                          data=(VERL_DATA_DIR / "rl_train.parquet", VERL_DATA_DIR / "rl_val.parquet"),
                          command=grpo_command, target=VERL_GRPO_DIR, actor=True,  # PPO saves the policy as actor/
                          missing_hint="dvc repro sft", sft_adapter=SFT_DIR),
               params, dry_run)


if __name__ == "__main__":
    cli.run(main)
