PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test fuzz bench lint clean

# venv: install Graphviz and Chromium if possible, create .venv and install graphgen[test,numba] (editable).
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if ! command -v dot >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Graphviz via apt-get..."; \
	    log=$$(mktemp); \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz; } >"$$log" 2>&1 \
	      || { cat "$$log" >&2; echo "error: apt-get install graphviz failed" >&2; rm -f "$$log"; exit 1; }; \
	    rm -f "$$log"; \
	  else \
	    echo "warning: Graphviz 'dot' not found; install it with 'sudo apt-get install graphviz' (rendering will be unavailable)" >&2; \
	  fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Chromium via apt-get (the HTML page's browser tests)..."; \
	    log=$$(mktemp); \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$$log" 2>&1 \
	      || { cat "$$log" >&2; echo "error: apt-get install chromium failed" >&2; rm -f "$$log"; exit 1; }; \
	    rm -f "$$log"; \
	  else \
	    echo "warning: /usr/bin/chromium not found; install it with 'sudo apt-get install chromium' (the page's browser tests will be skipped)" >&2; \
	  fi; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test,numba]"
	@touch $@

# demo: run the end-to-end example.
demo: venv
	$(PY) examples/demo.py

# test: run the test suite (extra flags via PYTEST_ARGS="...").
test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

# fuzz: the long fuzz run (5,000 cases, under 30 minutes on 2 cores): prints the
# outcome table and writes the failing cases' reproducers to fuzz-failures/.
# Extra flags via FUZZ_ARGS="--cases 10000 --seed 3".
FUZZ_ARGS ?=
fuzz: venv
	$(PY) tests/fuzz/run.py --cases 5000 --seed 0 $(FUZZ_ARGS)

# bench: run the benchmarks.
bench: venv
	$(PY) benchmarks/run.py

# lint: ruff lint + format check.
lint: venv
	$(VENV)/bin/ruff check graphgen tests
	$(VENV)/bin/ruff format --check graphgen tests

# clean: remove the venv, build artefacts and caches.
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
