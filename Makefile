# The README's two commands: `make demo` (set up, then the tiny end-to-end pipeline) and `make test`.
# Both create the virtual environment .venv on first use (CPU torch from the local wheel, then youri).
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	youri pipeline recipes/demo.yaml

test: setup
	bash scripts/test.sh
