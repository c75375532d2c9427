# spineloss: `make run` (set-up + the main job) and `make test` (set-up + the whole test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup bench-setup clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/spineloss demo

test: $(STAMP)
	$(PY) -m pytest -q

bench-setup: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'

clean:
	rm -rf $(VENV) runs .pytest_cache
