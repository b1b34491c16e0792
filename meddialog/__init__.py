"""MedDialog: the library behind the DVC stages (stages/) and the tools (tools/).

    params, paths, errors, cli, tracking, digests, hub   config, locations, one-line errors, MLflow, run keys
    data/        raw sources, conversations, cleaning and splits
    modeling/    loading (base + adapters), precision, merging, generation
    training/    trainer setup, the shared training run, launchers, SFT tokenisation, rewards
    evaluation/  scoring, evaluation, the comparison report, adapter retention
    verl/        verl's Parquet, launch and export
"""
