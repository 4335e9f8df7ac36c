# Two commands do all the set-up on a fresh machine:
#   make demo   -- the main job: `basinscope demo` on built-in data
#   make test   -- ruff, the import layers (import-linter) and pytest (minutes; leaves
#                  out the science tier)
#   make science -- what the studies show, on their quick configurations (CI runs it too)
# Each creates (or reuses) the virtual environment in $(VENV), installs torch==2.13.0
# first (the CPU wheel on these machines; a plain `torch` requirement would pull
# gigabytes of CUDA packages), then basinscope with the extras it needs (dev includes
# transformers, for the built-in BERT), torch pinned again so that no extra replaces it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test science lint format bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[dev]" "torch==$(TORCH_VERSION)"
	touch $@

demo: $(VENV)/.installed-dev
	$(BIN)/basinscope demo $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/pytest -n auto --dist loadfile $(ARGS)

science: $(VENV)/.installed-dev
	$(BIN)/pytest -m science $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_surface.py

clean-venv:
	rm -rf $(VENV)
