# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev

.PHONY: demo test lint bench format clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[data]'
	touch $@

$(STAMP_DEV): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[all,dev]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/slimkit compress examples/lenet5_deep_compression.yaml --out runs/demo

# Headless Chromium renders report.html in one test; install it when missing (root only).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the report rendering test will be skipped"; }

test: $(STAMP_DEV) chromium
	$(BIN)/python -m pytest -x -n 2 --timeout 900

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

format: $(STAMP_DEV)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Each script prints its side-by-side table; the output is kept in results/<name>.txt and
# collected into benchmarks/RESULTS.md.
bench: $(STAMP_DEV)
	@set -e; for f in benchmarks/[a-z]*.py; do n=$$(basename $$f .py); echo "== $$f"; \
	  $(BIN)/python $$f | tee benchmarks/results/$$n.txt; done
	$(BIN)/python benchmarks/_make_results.py

clean:
	rm -rf $(VENV) runs build *.egg-info
