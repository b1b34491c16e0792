"""Compare two revisions or DVC experiments on the conversations both scored, with paired intervals.

    python -m tools.compare HEAD my-experiment            # grpo's answers (the default model)
    python -m tools.compare main~1 HEAD --model sft --top 5

Each side is a git revision (a commit, branch or tag) or a DVC experiment name (`dvc exp list`). Both sides'
metrics/<model>_predictions.jsonl are read through `dvc.api` from the DVC cache (or the remote), without a
checkout; every metric's difference B − A comes with its paired bootstrap interval over the conversations
both sides answered (meddialog/evaluation/intervals.py), then the conversations whose answers changed most.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

from meddialog import cli
from meddialog.errors import UserError
from meddialog.evaluation.intervals import conversation_scores, corpus_bleu, paired_differences
from meddialog.evaluation.scoring import Embedder, rouge_l
from meddialog.paths import EVALUATED_MODELS, METRICS_DIR

log = logging.getLogger("compare")


def resolve(revision: str) -> str:
    """The commit a git revision or a DVC experiment name points at."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode == 0:
        return found.stdout.strip()
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    with Repo() as repo:
        ref = resolve_name(repo.scm, revision).get(revision)
        if ref is not None:
            return repo.scm.get_ref(str(ref))
    raise UserError(f"{revision!r} is neither a git revision nor a DVC experiment (`dvc exp list` names them)")


def read_predictions(revision: str, commit: str, model: str) -> list[dict]:
    import dvc.api
    from dvc.exceptions import DvcException

    path = METRICS_DIR / f"{model}_predictions.jsonl"
    try:
        text = dvc.api.read(str(path), rev=commit, encoding="utf-8")
    except (DvcException, FileNotFoundError) as err:
        raise UserError(f"{revision}: cannot read {path} ({str(err).splitlines()[0]}); was the pipeline run there, "
                        "and is its output in the DVC cache or the remote (`dvc pull`)?") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def changed_most(before: list[dict], after: list[dict], top: int) -> list[tuple[float, dict, dict]]:
    """The shared conversations whose two answers differ most: 1 − ROUGE-L between the answers."""
    by_id = {row["id"]: row for row in before}
    pairs = [(1.0 - rouge_l(row["prediction"], by_id[row["id"]]["prediction"]), by_id[row["id"]], row)
             for row in after if row["id"] in by_id]
    return sorted(pairs, key=lambda p: -p[0])[:top]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.compare", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the revision or experiment compared against (A)")
    parser.add_argument("b", help="the revision or experiment compared (B); differences are B − A")
    parser.add_argument("--model", choices=list(EVALUATED_MODELS), default="grpo")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--top", type=int, default=3, help="conversations whose answers changed most (0 = none)")
    args = parser.parse_args(argv)
    if args.resamples < 1000:
        raise UserError("--resamples: at least 1000 (fewer make the interval's own noise visible)")
    rows = {side: read_predictions(rev, resolve(rev), args.model) for side, rev in (("a", args.a), ("b", args.b))}
    embedder = Embedder()
    a, b = (conversation_scores(rows[side], embedder) for side in ("a", "b"))
    shared = len(set(a.ids) & set(b.ids))
    if not shared:
        raise UserError(f"{args.a} and {args.b} share no scored conversation for {args.model}")
    print(f"{args.model}: {args.b} − {args.a} on the {shared} conversations both scored "
          f"(paired bootstrap, {args.resamples} resamples, 95% intervals)")
    print(f"{'metric':<20}{'A':>10}{'B':>10}{'B − A':>11}   interval")
    for d in paired_differences(b, a, args.resamples, args.seed):
        mean_a, mean_b = (_mean(s, d.metric, set(a.ids) & set(b.ids)) for s in (a, b))
        print(f"{d.metric:<20}{mean_a:>10.4f}{mean_b:>10.4f}{d.value:>+11.4f}   [{d.low:+.4f}, {d.high:+.4f}]"
              + ("  identical" if d.low == d.high == 0 else "  within noise" if d.within_noise else ""))
    if args.top:
        changed = [c for c in changed_most(rows["a"], rows["b"], args.top) if c[0] > 0]
        print("\nanswers that changed most (1 − ROUGE-L between A's and B's answer):" if changed else
              "\nno answer changed")
        for change, before, after in changed:
            print(f"\n[{after['id']}] change {change:.2f}\n  patient: {_short(after['question'])}\n"
                  f"  A: {_short(before['prediction'])}\n  B: {_short(after['prediction'])}")


def _mean(scores, metric: str, ids: set[str]) -> float:
    keep = scores.subset([cid for cid in scores.ids if cid in ids])
    return float(corpus_bleu(keep.bleu_stats.sum(0))) if metric == "bleu" else float(keep.values[metric].mean())


def _short(text: str, chars: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars - 1] + "…"


if __name__ == "__main__":
    cli.run(lambda: main(sys.argv[1:]))
