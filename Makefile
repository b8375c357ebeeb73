# Entry points: make demo | make test | make lint | make bench | make .venv
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt
HES_MNIST_DIR ?= $(abspath ../shared/data/mnist)
export HES_MNIST_DIR

.PHONY: demo test test-fast lint bench chaos clean

$(VENV): pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(VENV)

demo: $(VENV)
	$(BIN)/python -m service.demo

test: $(VENV)
	$(BIN)/python -m pytest -q -ra

test-fast: $(VENV)
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint: $(VENV)
	$(BIN)/ruff check workers coordinator service tests bench
	$(BIN)/mypy

bench: $(VENV)
	$(BIN)/python bench/run.py --mnist $(HES_MNIST_DIR) --out BENCHMARKS.md

# Fault-injection soak on a 3-node Ray cluster behind a real `hes serve` (about 10 minutes): BENCHMARKS.md "Chaos soak"
chaos: $(VENV)
	$(BIN)/python bench/chaos.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
