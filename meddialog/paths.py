"""Where the pipeline's data, models and metrics live, relative to the repository root (the working
directory of every stage, as DVC runs them). dvc.yaml names the same paths as deps and outs."""
from pathlib import Path

RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")
VERL_DATA_DIR = Path("data/verl")

BASE_DIR = Path("models/base")
SFT_DIR = Path("models/sft")
GRPO_DIR = Path("models/grpo")
EXPORT_DIR = Path("models/export")  # the merged model that leaves the repository
GGUF_DIR = Path("models/gguf")      # the export as GGUF files, for llama.cpp and Ollama
VERL_SFT_DIR = Path("models/verl/sft")
VERL_GRPO_DIR = Path("models/verl/grpo")
VERL_CHECKPOINT_ROOT = Path("models/verl/checkpoints")

SAFETY_PROBE = Path("data/safety/probe.jsonl")  # held out: no stage trains on it (data card beside it)
KNOWLEDGE_TASKS_DIR = Path("data/knowledge")    # lm-evaluation-harness task configs and their data

METRICS_DIR = Path("metrics")
PROVENANCE_DIR = METRICS_DIR / "provenance"

SCRATCH_DIR = Path("scratch")
CHECKPOINT_ROOT = SCRATCH_DIR / "checkpoints"  # TRL runs, for resuming (not DVC outputs)
MERGED_ROOT = SCRATCH_DIR / "merged"          # adapter chains merged in full precision, cached
JUDGE_CACHE = SCRATCH_DIR / "judge" / "cache.jsonl"  # judge verdicts, keyed by what was judged

# Every model the evaluations compare, by the name metrics use for it ("baseline" is the untrained base).
EVALUATED_MODELS = {"baseline": BASE_DIR, "sft": SFT_DIR, "grpo": GRPO_DIR}
