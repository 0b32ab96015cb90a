# Quick start: `make demo` runs the main job, `make test` runs the test suite.
# Both install what they need into the current Python (python3 by default; set PYTHON=... to change).
PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install dev data demo test test-all bench lint

# torch first, pinned to the local CPU build: installing the package alone would let pip choose a CUDA build.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -q -e .

dev: install
	$(PIP) install -q -e ".[dev]"

# The default data set, Debian's dataset-fashion-mnist package.
data:
	@[ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST)/train-images-idx3-ubyte ] || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

demo: install data
	$(PYTHON) -m supernet demo --out runs/demo

test: dev data
	$(PYTHON) -m pytest

test-all: dev data
	$(PYTHON) -m pytest -m ""

# search_speed.py measures on the demo's trained run: run `make demo` first.
bench: install data
	for script in benchmarks/*.py; do $(PYTHON) $$script || exit 1; done

lint: dev
	$(PYTHON) -m ruff check src tests benchmarks
