# The few commands the README names. Python 3.11 and Debian/Ubuntu are assumed.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# DVC stages call `python`: the one in the virtual environment.
export PATH := $(abspath $(BIN)):$(PATH)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup replicate replicate-full test test-fast lab clean-reports

## setup: the virtual environment in .venv, the package and its pins, and Fashion-MNIST
setup: $(VENV)/.installed fashion-mnist

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Debian's dataset-fashion-mnist where apt is usable (root or passwordless sudo); otherwise
# torchvision downloads it into data/fashion-mnist where a network exists.
fashion-mnist: $(VENV)/.installed
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] || [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	    echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	    $(BIN)/python -m replicate data fashion_mnist --download; \
	fi

## replicate: the reduced replication of every paper (dvc.yaml's `reduced` stages)
replicate: setup
	$(BIN)/dvc repro reduced
	@cat reports/scoreboard.md

## replicate-full: the full replication (GPUs, real datasets): dvc.yaml's `full` stages
replicate-full: setup
	$(BIN)/dvc repro full

## test: everything CI runs: the unit tier (two processes), then the slow tier: the reduced
## replication as `make replicate` runs it (dvc repro: each notebook once, nothing again when it is
## up to date) and the checks that read its reports, the full profile without datasets, compositions
test: setup
	$(BIN)/python -m pytest -q -n 2 -m "not slow"
	$(BIN)/python -m pytest -q -m "slow and not full_profile" --durations=40
	$(BIN)/python -m pytest -q -n 2 -m full_profile --durations=5 tests/test_notebooks.py

## test-fast: the unit tier alone (no notebook), for everyday work: at most 5 minutes on 2 cores
test-fast: setup
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

## lab: JupyterLab on the notebooks (as root too); notebooks/ are saved without outputs
lab: setup
	$(BIN)/jupyter lab notebooks/ --config=jupyter_server_config.py $$( [ "$$(id -u)" = 0 ] && echo --allow-root )
