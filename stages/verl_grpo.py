"""Tutorial step 5B (`6_train_grpo_verl.py`): GRPO with verl on Ray, for several GPUs or nodes.

    python -m stages.verl_grpo --dry-run       # print the commands it would run, and exit
    dvc repro pipelines/verl/dvc.yaml:verl_grpo
    dvc exp run pipelines/verl/dvc.yaml:verl_grpo -S verl.n_gpus_per_node=2 -S verl.grpo.num_generations=8

`python -m verl.trainer.main_ppo` with configs/verl/grpo.yaml (adv_estimator=grpo) on
data/verl/rl_{train,val}.parquet. The policy starts from models/base with the SFT adapter
(models/sft) merged in, and trains a new LoRA adapter on top, as the TRL grpo stage does. For each
prompt the rollout engine (vLLM, SGLang or TensorRT-LLM: `verl.grpo.rollout`) samples
`verl.grpo.num_generations` answers; verl's reward manager scores each with our
`meddialog.training.rewards.compute_score` (weights in `grpo.rewards`), so verl and TRL optimise the same
reward. KL is a loss term against the starting policy (`verl.grpo.beta`), not a reward penalty.
verl's model merger then exports the last checkpoint to models/verl/grpo (meddialog/verl/export.py).
Needs CUDA GPUs, verl's environment (`make setup-verl`) and the rollout engine (README).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from meddialog import cli
from meddialog.params import load_params
from meddialog.paths import BASE_DIR, SFT_DIR, VERL_DATA_DIR, VERL_GRPO_DIR

log = logging.getLogger("verl_grpo")



def main(argv: list[str] | None = None) -> None:
    dry_run = parse_args(argv).dry_run
    params = load_params()

    from meddialog.errors import UserError
    from meddialog.verl.export import checkpoint_arg, export, merge_sft, run_dir
    from meddialog.verl.launch import export_command, grpo_command, run

    root = Path.cwd()
    data = [VERL_DATA_DIR / "rl_train.parquet", VERL_DATA_DIR / "rl_val.parquet"]
    verl = params.verl
    run_path = run_dir("grpo", (verl.grpo, verl.nnodes, verl.n_gpus_per_node, params.lora, params.seed,
                                params.model.trust_remote_code),
                       [*data, BASE_DIR / "config.json", BASE_DIR / "source.json", SFT_DIR])
    init_dir = run_path / "init"
    train = grpo_command(params, root, init_dir, run_path)
    if dry_run:
        print(f"# {BASE_DIR} + {SFT_DIR} merged into {root / init_dir} (meddialog.verl.export.merge_sft)")
        print(train.shell())
        print(export_command(params, root, checkpoint_arg(root / run_path, actor=True, known=False), VERL_GRPO_DIR).shell())
        print(f"# then {VERL_GRPO_DIR}/lora_adapter: lora_alpha {params.lora.alpha} (lora.alpha) and lineage.json")
        return

    missing = [str(p) for p in (*data, BASE_DIR / "config.json", SFT_DIR / "adapter_config.json") if not p.is_file()]
    if missing:
        raise UserError(f"missing {', '.join(missing)}: run the main pipeline first (`dvc repro sft`)")
    merge_sft(SFT_DIR, params.model, init_dir)
    run(train, "verl GRPO")
    adapter = export(params, root, run_path, actor=True, target=VERL_GRPO_DIR,
                     started_from={"base_model": str(BASE_DIR), "adapters": [str(SFT_DIR)]})
    log.info("wrote %s (evaluate: python -m tools.evaluate --model-path %s ...)", adapter, adapter)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.verl_grpo", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return parser.parse_args(argv)


if __name__ == "__main__":
    cli.run(main)
