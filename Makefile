# Entry points: make demo | make test | make lint | make docs | make bench | make gpu-check | make net-up | make net-down
# | make .venv
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints.txt
HES_MNIST_DIR ?= $(abspath ../shared/data/mnist)
export HES_MNIST_DIR

.PHONY: demo test test-fast lint docs bench chaos gpu-check net-up net-down clean

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
	$(BIN)/ruff check workers coordinator service tests bench examples deploy
	$(BIN)/mypy
	$(BIN)/mypy deploy/netlab.py

# docs/configuration.md from the field descriptions of coordinator/config.py and service/settings.py
docs: $(VENV)
	$(BIN)/python -m service.config_docs --out docs/configuration.md

# The bench extra (Ray Train for the network section's DDP rows) on top of the dev install
$(VENV)/.bench: $(VENV) pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python bench/run.py --mnist $(HES_MNIST_DIR) --out BENCHMARKS.md

# Fault-injection soak on a 3-node Ray cluster behind a real `hes serve` (about 10 minutes): BENCHMARKS.md "Chaos soak"
chaos: $(VENV)
	$(BIN)/python bench/chaos.py --out BENCHMARKS.md

# GPU workers: a GPU worker beside a CPU worker, replica digests, round times; says so and exits 0 without a GPU
gpu-check: $(VENV)
	$(BIN)/python bench/gpu_check.py --mnist $(HES_MNIST_DIR) --out BENCHMARKS.md

# A multi-host Ray cluster on this machine (root): HOSTS network namespaces on a bridge, links limited to LINK
# (a tc rate, or none), Ray head and hes serve on host 1, Ray worker nodes on the others (deploy/netlab.py)
HOSTS ?= 4
LINK ?= 100mbit
net-up: $(VENV)
	$(BIN)/python deploy/netlab.py up --hosts $(HOSTS) --link $(LINK)

net-down: $(VENV)
	$(BIN)/python deploy/netlab.py down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
