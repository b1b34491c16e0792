"""Check every metrics file dvc.yaml declares: present, flat JSON of numbers, models comparable.

    python -m tools.check_metrics          # `make repro` runs it after `dvc repro`

`dvc metrics show` and `dvc metrics diff` skip a missing or unreadable metrics file without a
word, so a diff can look clean while one side was never written. This check fails instead
(exit 1, one line per problem). The evaluated models (baseline, sft, grpo) must carry the same
keys, so every row of a diff has both sides.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from meddialog import cli
from meddialog.errors import UserError
from meddialog.params import read_yaml

log = logging.getLogger("check_metrics")

MODEL_METRICS = ("metrics/baseline.json", "metrics/sft.json", "metrics/grpo.json")


def declared_metrics(dvc_yaml: Path) -> list[str]:
    """Paths of the metrics files the pipeline declares (per stage and top level); dvc.yaml read with
    YAML 1.2 rules, as DVC reads it."""
    spec = read_yaml(dvc_yaml) or {}
    entries = list(spec.get("metrics") or [])
    for stage in (spec.get("stages") or {}).values():
        entries += stage.get("metrics") or []
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def problems_in(path: Path) -> tuple[list[str], dict]:
    """What is wrong with one metrics file (nothing when it is fine), and its values."""
    if not path.is_file():
        return [f"{path}: missing (run `dvc repro`, or `dvc pull` to fetch it)"], {}
    try:
        values = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return [f"{path}: not valid JSON ({err})"], {}
    if not isinstance(values, dict) or not values:
        return [f"{path}: expected a non-empty JSON object of metric: number"], {}
    bad = [k for k, v in _leaves(values)
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    return ([f"{path}: not a finite number: {', '.join(sorted(bad))}"] if bad else []), values


def _leaves(values: dict, prefix: str = ""):
    """(dotted key, value) of every leaf: DVC reads nested metrics as `model.task.acc`."""
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check(root: Path = Path(".")) -> list[str]:
    problems: list[str] = []
    keys: dict[str, set[str]] = {}
    for name in declared_metrics(root / "dvc.yaml"):
        found, values = problems_in(root / name)
        problems += found
        if name in MODEL_METRICS and values:
            keys[name] = set(values)
    union = set().union(*keys.values()) if keys else set()
    for name, present in keys.items():
        if present != union:
            problems.append(f"{name}: lacks {', '.join(sorted(union - present))} (the other models have them)")
    return problems


def main() -> None:
    problems = check()
    if problems:
        raise UserError("metrics incomplete:\n  " + "\n  ".join(problems))
    log.info("every metrics file in dvc.yaml is present and numeric (%d files)", len(declared_metrics(Path("dvc.yaml"))))


if __name__ == "__main__":
    cli.run(main)
