# make demo: set everything up and run surgery on the default Mask R-CNN.
# make test: set everything up and run the test suite (the exhaustive `slow` sweeps over every
#            builder run with `make test-slow`; CI runs both, see .ci/run).
# Re-running is fast: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup graphviz chromium demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

graphviz:
	@if ! command -v dot >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing graphviz (the dot binary)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "graphviz's dot binary is missing; install it with: sudo apt-get install -y graphviz (macOS: brew install graphviz)"; \
	  fi; \
	fi

# Headless Chromium opens the review page in the tests (tests/test_review.py).
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (headless browser for the review page tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing; install it with: sudo apt-get install -y chromium (the review page tests skip without it, and fail under CI=true)"; \
	  fi; \
	fi

setup: $(STAMP) graphviz chromium

demo: setup
	$(VENV)/bin/surgery inspect
	$(VENV)/bin/surgery check
	@mkdir -p out
	$(VENV)/bin/surgery render -o out/maskrcnn.svg
	@echo "diagram written to out/maskrcnn.svg"

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check surgery tests
	$(PY) -m mypy surgery

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
