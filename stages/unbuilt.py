"""Placeholder for stages declared in dvc.yaml whose code has not been written yet.

Running one ends with a single line naming the missing piece, instead of a traceback, so
`dvc dag` shows the whole pipeline while `dvc repro` of the built stages keeps working.
"""
from __future__ import annotations

from stages.errors import UserError


class StageNotBuilt(UserError):
    pass


def fail(stage: str, missing: str) -> None:
    raise StageNotBuilt(f"the {stage} stage is not built yet: {missing}")
