# The README's two commands: `make serve` and `make test`. Both set up .venv/ on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPOSITORY ?= model_repository

.PHONY: install test lint serve models repository bench clean

install: $(STAMP)

# Re-installs whenever the pinned requirements or the project metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
