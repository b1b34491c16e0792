"""Kill suite: SIGKILL a stage at seeded points, rerun `dvc repro`, and compare with an uninterrupted run.

    python -m tools.kill_suite                                   # process sft grpo eval, 2 writes + 1 moment each
    python -m tools.kill_suite --stages sft --points 4 --moments 2 --seed 7 --report scratch/kill_suite.json
    python -m tools.kill_suite --stages sft --at "write models/sft.partial/adapter_model.safetensors 1"

Run it in a project whose `dvc status` is clean (after `dvc repro`). For each stage it first reruns the stage
uninterrupted (`dvc repro --force --single-item`, then `dvc repro`), recording every write it makes inside
the project (tools/kill_hook: files opened for writing, directories made, renames). That run is the
reference, and the writes that differ between it and the results it started from are the run's own (times,
rates), not its result. Then, for each kill point, the stage is started again and its process group (dvc and
the stage) is SIGKILLed right before one of the writes the reference run made (drawn with --seed among
the stage's outputs, their partial files, checkpoints and dvc.lock), or at a moment drawn within the
reference run's duration. Each kill run starts without the stage's dvc.lock entry and each rerun with
--no-run-cache, as a first run of new params would: otherwise DVC checks the reference run's outputs out
of its cache and the stage's own recovery goes untested. After each kill the suite notes what was left,
runs `dvc repro` as a user would, and checks: the rerun succeeds, `dvc status` is clean, no partial file is
left, and every output equals the reference run's (byte for byte; in a file holding run times, every value
but those).

It changes the project's outputs only to results equal to the ones it found (times aside). Exit 1 if any
point fails; the report (--report, JSON) and the printed table hold every point.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meddialog import cli
from meddialog.atomic import PARTIAL_SUFFIX
from meddialog.errors import UserError

HOOK_DIR = Path(__file__).resolve().parent / "kill_hook"
BIN = Path(sys.executable).parent
# values that say how a run went rather than what it produced: a resumed run reports the step it resumed at
RUN_KEYS = {"resumed_from_step"}
TIMEOUT_S = 3600


@dataclass
class Point:
    stage: str
    at: str  # "<kind> <path> <n>": before the n-th such write of one process; or "moment <seconds>"
    reached: bool = False
    left: list[str] = field(default_factory=list)  # partial files and missing outputs right after the kill
    stale_after_kill: list[str] = field(default_factory=list)
    rerun_rc: int | None = None
    rerun_stages: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    status_clean: bool = False
    partials_after_rerun: list[str] = field(default_factory=list)
    differences: dict[str, str] = field(default_factory=dict)  # output file -> what differs from the reference

    @property
    def passed(self) -> bool:
        return (self.rerun_rc == 0 and self.status_clean and not self.partials_after_rerun
                and not self.differences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=["process", "sft", "grpo", "eval"])
    parser.add_argument("--points", type=int, default=2, help="kill points drawn among each stage's writes")
    parser.add_argument("--moments", type=int, default=1, help="kill points drawn in time")
    parser.add_argument("--at", action="append", default=[],
                        help='an exact write to kill at, "<kind> <path> <n>" (then only these, for --stages)')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    root = Path.cwd()
    stages = pipeline_stages(root)
    unknown = [s for s in args.stages if s not in stages]
    if unknown:
        raise UserError(f"no stage {', '.join(unknown)} in dvc.yaml (stages: {', '.join(stages)})")
    if stale(root):
        raise UserError(f"dvc status is not clean ({', '.join(stale(root))}): run `dvc repro` first; the suite "
                        "compares every rerun with the results it finds")

    points: list[Point] = []
    for stage in args.stages:
        points += kill_stage(root, stage, stages[stage], args)
        print(table([p for p in points if p.stage == stage]), flush=True)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps([{**asdict(p), "passed": p.passed} for p in points], indent=2) + "\n")
    failed = [p for p in points if not p.passed]
    # a write made outside Python (safetensors writes from Rust) or a moment after the run ended: no kill
    unreached = sum(not p.reached for p in points)
    print(f"{len(points) - len(failed)} of {len(points)} kill points passed"
          + (f" ({unreached} not reached, so they test nothing)" if unreached else ""))
    if failed:
        raise UserError(f"{len(failed)} kill point(s) failed: " + "; ".join(f"{p.stage} at {p.at}" for p in failed))


def kill_stage(root: Path, stage: str, outs: list[str], args) -> list[Point]:
    """The reference run of `stage`, then one kill, `dvc repro` and comparison per drawn point."""
    before = snapshot(root)
    events, duration = reference_run(root, stage)
    reference = snapshot(root)
    volatile = {path: differing_parts(path, before[path], reference[path])
                for path in reference if path in before and before[path].digest != reference[path].digest}
    rng = random.Random(f"{args.seed}-{stage}")
    if args.at:
        chosen = list(args.at)
    else:
        # dict.fromkeys: two processes' n-th write of one path are one point (the probe kills at the first)
        candidates = list(dict.fromkeys(e for e in events if belongs_to(e.split(" ", 1)[1].rsplit(" ", 1)[0], outs)))
        chosen = rng.sample(candidates, min(args.points, len(candidates)))
        chosen += [f"moment {rng.uniform(0.2, 0.9) * duration:.1f}" for _ in range(args.moments)]
    return [kill_and_rerun(root, stage, outs, at, reference, volatile) for at in chosen]


def reference_run(root: Path, stage: str) -> tuple[list[str], float]:
    """The stage rerun uninterrupted with the probe recording: its writes as kill points
    ("<kind> <path> <n>"), and its duration in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "writes.log"
        started = time.monotonic()
        result = dvc(root, "repro", "--force", "--single-item", stage, probe={"KILL_SUITE_LOG": str(log)})
        duration = time.monotonic() - started
        if result.returncode != 0:
            raise UserError(f"the uninterrupted run of {stage} failed:\n{tail(result)}")
        lines = log.read_text().splitlines() if log.exists() else []
    settle = dvc(root, "repro")
    if settle.returncode != 0:
        raise UserError(f"`dvc repro` after the uninterrupted run of {stage} failed:\n{tail(settle)}")
    counts: dict[str, int] = {}
    events = []
    for line in lines:  # "<pid> <kind> <path>": the probe counts each write per process
        counts[line] = counts.get(line, 0) + 1
        events.append(f"{line.split(' ', 1)[1]} {counts[line]}")
    return events, duration


def kill_and_rerun(root: Path, stage: str, outs: list[str], at: str, reference: dict, volatile: dict) -> Point:
    point = Point(stage, at)
    forget_run(root, stage)
    with tempfile.TemporaryDirectory() as tmp:
        reached = Path(tmp) / "reached"
        command = [str(BIN / "dvc"), "repro", "--force", "--single-item", stage]
        if at.startswith("moment "):
            process = subprocess.Popen(command, cwd=root, env=environment(), start_new_session=True,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                process.wait(timeout=float(at.split()[1]))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                point.reached = True
            process.wait()
        else:
            dvc(root, *command[1:], probe={"KILL_SUITE_AT": at, "KILL_SUITE_REACHED": str(reached)})
            point.reached = reached.exists()
    point.left = partials(root) + [f"missing {o}" for o in outs if not (root / o).exists()]
    point.stale_after_kill = stale(root)

    # --no-run-cache: the reference run put exactly these deps in DVC's run cache, which a first run (new
    # params, new code) does not find there; restoring from it would leave the stage's own recovery untested
    rerun = dvc(root, "repro", "--no-run-cache")
    point.rerun_rc = rerun.returncode
    output = rerun.stdout + rerun.stderr
    point.rerun_stages = [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
    point.resumed_from = next((line.split("resuming from ")[1].rsplit("/", 1)[-1] for line in output.splitlines()
                               if "resuming from " in line), None)
    if rerun.returncode != 0:
        point.differences["dvc repro"] = tail(rerun)
        return point
    point.status_clean = not stale(root)
    point.partials_after_rerun = partials(root)
    now = snapshot(root)
    for path in sorted(set(reference) | set(now)):
        if path not in now or path not in reference:
            point.differences[path] = "missing" if path not in now else "not in the reference run"
        elif now[path].digest != reference[path].digest:
            difference = differing_parts(path, reference[path], now[path]) - volatile.get(path, set()) - RUN_KEYS
            if path == "dvc.lock":  # the hashes and sizes of files that hold run times change with them
                difference = {d for d in difference if not any(f".{v}." in d for v in volatile)}
            if difference:
                point.differences[path] = describe(reference[path], now[path], difference)
    return point


# --- the project's state -------------------------------------------------------------------------------


def forget_run(root: Path, stage: str) -> None:
    """Drop the stage's entry from dvc.lock, as before the first run of new params or code. Otherwise a kill
    before DVC rewrites dvc.lock leaves the reference run's entry, and `dvc repro` checks the outputs it names
    out of the cache instead of running the stage: right for the user, but the stage's own recovery untested."""
    from ruamel.yaml import YAML

    yaml = YAML()
    lock = yaml.load((root / "dvc.lock").read_text())
    lock["stages"].pop(stage, None)
    with open(root / "dvc.lock", "w") as out:
        yaml.dump(lock, out)


def pipeline_stages(root: Path) -> dict[str, list[str]]:
    """dvc.yaml's stages and the paths of their outputs (outs and metrics)."""
    from ruamel.yaml import YAML

    stages = YAML(typ="safe").load((root / "dvc.yaml").read_text())["stages"]
    return {name: [next(iter(o)) if isinstance(o, dict) else o
                   for o in spec.get("outs", []) + spec.get("metrics", [])] for name, spec in stages.items()}


def belongs_to(path: str, outs: list[str]) -> bool:
    """Whether a write is one of the stage's: an output, the partial it is written to first, a checkpoint,
    or DVC recording the run in dvc.lock."""
    whole = "/".join(part.removeprefix(".").removesuffix(PARTIAL_SUFFIX) for part in path.split("/"))
    return path == "dvc.lock" or path.startswith("scratch/checkpoints/") or any(
        whole == o or whole.startswith(o + "/") for o in outs)


@dataclass(frozen=True)
class Entry:
    digest: str
    lines: tuple[str, ...] | None  # text files: their lines, to say which parts differ
    tensors: bytes | None  # safetensors files up to 256 MiB: the bytes, to measure how far the tensors moved


def snapshot(root: Path) -> dict[str, Entry]:
    """Every file of every stage's outputs, and dvc.lock."""
    files = [root / "dvc.lock"]
    for outs in pipeline_stages(root).values():
        for out in outs:
            path = root / out
            files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    entries = {}
    for file in files:
        if file.is_file():
            data = file.read_bytes()
            try:
                lines = tuple(data.decode().splitlines()) if len(data) < 2**22 else None
            except UnicodeDecodeError:
                lines = None
            tensors = data if file.suffix == ".safetensors" and len(data) <= 2**28 else None
            entries[str(file.relative_to(root))] = Entry(hashlib.sha256(data).hexdigest(), lines, tensors)
    return entries


def differing_parts(path: str, a: Entry, b: Entry) -> set[str]:
    """What differs between two versions of a file: JSON keys (dotted), CSV cells (column of a row) or
    line numbers of other text; `bytes` for a binary file."""
    if a.lines is None or b.lines is None:
        return {"bytes"}
    text_a, text_b = "\n".join(a.lines), "\n".join(b.lines)
    if path == "dvc.lock":  # DVC writes a stage's entry where it finds room: compare what each entry says
        return set(json_differences(lock_entries(text_a), lock_entries(text_b)))
    if path.endswith(".json"):
        try:
            return set(json_differences(json.loads(text_a), json.loads(text_b)))
        except json.JSONDecodeError:
            return {"invalid JSON"}
    if path.endswith(".csv"):
        rows_a, rows_b = list(csv.DictReader(io.StringIO(text_a))), list(csv.DictReader(io.StringIO(text_b)))
        if len(rows_a) != len(rows_b) or (rows_a and rows_a[0].keys() != rows_b[0].keys()):
            return {"rows or columns"}
        return {f"{column}@{i}" for i, (ra, rb) in enumerate(zip(rows_a, rows_b)) for column in ra
                if ra[column] != rb[column]}
    if len(a.lines) != len(b.lines):
        return {"line count"}
    return {f"line {i + 1}" for i, (la, lb) in enumerate(zip(a.lines, b.lines)) if la != lb}


def lock_entries(text: str) -> dict:
    """dvc.lock with each stage's deps and outs keyed by path (`sft.outs.models/sft.md5`), to name what differs."""
    from ruamel.yaml import YAML

    stages = YAML(typ="safe").load(text).get("stages", {})
    return {stage: {key: {item["path"]: item for item in value} if key in ("deps", "outs") else value
                    for key, value in entry.items()} for stage, entry in stages.items()}


def json_differences(a, b, prefix: str = ""):
    """Dotted keys whose values differ; a key of RUN_KEYS is named alone, wherever it is nested."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from json_differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
    elif a != b:
        last = prefix.rsplit(".", 1)[-1]
        yield last if last in RUN_KEYS else prefix


def describe(reference: Entry, now: Entry, parts: set[str]) -> str:
    if parts == {"bytes"} and reference.tensors and now.tensors:
        return f"tensors differ from the reference run's (largest difference {largest_difference(reference, now):.3g})"
    return "differs in " + ", ".join(sorted(parts)[:6]) + (" ..." if len(parts) > 6 else "")


def largest_difference(reference: Entry, now: Entry) -> float:
    """Largest absolute difference between two versions' tensors (inf if their names or shapes differ)."""
    from safetensors.torch import load

    a, b = load(reference.tensors), load(now.tensors)
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def partials(root: Path) -> list[str]:
    """Partial files or directories an interrupted atomic write left in an output's directory."""
    found = []
    for outs in pipeline_stages(root).values():
        for out in outs:
            parent = (root / out).parent
            if parent.is_dir():
                found += [str(p.relative_to(root)) for p in parent.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    return sorted(set(found))


def stale(root: Path) -> list[str]:
    """The main pipeline's stages `dvc status` reports (the optional verl stages report 'not run')."""
    result = dvc(root, "status", "--json")
    if result.returncode != 0:
        raise UserError(f"dvc status failed:\n{tail(result)}")
    return sorted(name for name in json.loads(result.stdout or "{}") if not name.startswith("pipelines/verl/"))


def environment(probe: dict[str, str] | None = None) -> dict[str, str]:
    """This virtualenv's dvc and python first on PATH; with `probe`, tools/kill_hook loaded in every process."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    for name in ("KILL_SUITE_LOG", "KILL_SUITE_AT", "KILL_SUITE_REACHED", "DVC_ROOT"):
        env.pop(name, None)
    if probe:
        env.update(probe, PYTHONPATH=str(HOOK_DIR), KILL_SUITE_ROOT=os.getcwd())
    return env


def dvc(root: Path, *args: str, probe: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=root, env=environment(probe), capture_output=True,
                          text=True, timeout=TIMEOUT_S, start_new_session=probe is not None)


def tail(result: subprocess.CompletedProcess, lines: int = 8) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])


def table(points: list[Point]) -> str:
    rows = ["| stage | killed at | reached | left behind | rerun | resumed from | status clean | outputs |",
            "|---|---|---|---|---|---|---|---|"]
    for p in points:
        outputs = "identical" if not p.differences else "; ".join(f"{k}: {v}" for k, v in p.differences.items())
        rows.append(f"| {p.stage} | `{p.at}` | {'yes' if p.reached else 'no'} | {', '.join(p.left) or 'nothing'} "
                    f"| rc {p.rerun_rc}: {', '.join(p.rerun_stages) or 'nothing'} | {p.resumed_from or '-'} "
                    f"| {'yes' if p.status_clean else 'NO'} | {outputs} |")
    return "\n".join(rows)


if __name__ == "__main__":
    cli.run(main)
