"""Stage 1 (tutorial step 1): fetch every configured data source into data/raw/<name>.jsonl.

    python -m stages.download

Default sources are the embedded sample in data/sample/ (offline). Point a source at the hub
with `dvc exp run -S data.sources.medical_flashcards.path=hf:medalpaca/medical_meadow_medical_flashcards
-S data.sources.medical_flashcards.num_samples=1000`.
"""
from __future__ import annotations

import logging

from meddialog import atomic, cli
from meddialog.data.sources import read_source
from meddialog.params import load_params
from meddialog.paths import RAW_DIR

log = logging.getLogger("download")



def main() -> None:
    params = load_params()
    # Read every source before writing anything, so a failing source leaves no half-written output.
    records = {name: read_source(name, source, params.data, params.seed)
               for name, source in params.data.sources.items()}
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    for stale in RAW_DIR.glob("*.jsonl"):
        stale.unlink()
    for name, lines in records.items():
        path = RAW_DIR / f"{name}.jsonl"
        atomic.write_text(path, "".join(line + "\n" for line in lines))
        log.info("wrote %s (%d records)", path, len(lines))


if __name__ == "__main__":
    cli.run(main)
