"""The DVC stage entry points, one module per stage of dvc.yaml (`python -m stages.<name>`).

Each reads top to bottom like its step of the tutorial; the work is done by the `meddialog` library.
"""
