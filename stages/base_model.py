"""Stage: materialise the base model into models/base (safetensors + tokenizer).

    python -m stages.base_model

models/base is a DVC output with `cache: false`: it is rebuilt from its source, never pushed.
Rebuilding gives byte-identical files, so after `dvc pull` in a fresh clone this is the only
stage `dvc repro` runs.
"""
from __future__ import annotations

import logging
import shutil

from meddialog import cli
from meddialog.modeling.loading import load_source_model, save_base
from meddialog.params import load_params
from meddialog.paths import BASE_DIR

log = logging.getLogger("base_model")



def main() -> None:
    params = load_params()
    model, tokenizer = load_source_model(params.model, params.data)
    if BASE_DIR.exists():
        shutil.rmtree(BASE_DIR)
    source = {"name": params.model.name, "revision": params.model.revision,
              "trust_remote_code": params.model.trust_remote_code}
    save_base(model, tokenizer, BASE_DIR, source)
    log.info("saved %s (%s, %.1fM parameters)", BASE_DIR, model.config.model_type,
             sum(p.numel() for p in model.parameters()) / 1e6)


if __name__ == "__main__":
    cli.run(main)
