# The README's two commands. Both create or reuse .venv, install distill and make sure the data is there.
#   make demo   - install, get Fashion-MNIST, run `distill demo`
#   make test   - install with the dev extras, get the data, check the layers contract (lint-imports,
#                 [tool.importlinter] in pyproject.toml), run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test data install install-dev lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-install only when the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[vision]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[vision,tensorboard,compress,export,text,yolo,dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

data: | $(PY)
	PYTHON=$(PY) bash scripts/get_data.sh

demo: install data
	$(VENV)/bin/distill demo

test: install-dev data
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
