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
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || echo "chromium not installed: the HTML browser test will skip"
	$(PY) -m pytest -q

bench-setup: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'

clean:
	rm -rf $(VENV) runs .pytest_cache
