# The few commands the README names. Python 3.11 and Debian/Ubuntu are assumed.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# DVC stages call `python`: the one in the virtual environment.
export PATH := $(abspath $(BIN)):$(PATH)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup replicate replicate-full test lab clean-reports

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

## replicate: the reduced replication of every paper (DVC pipeline pipelines/reduced/dvc.yaml)
replicate: setup
	$(BIN)/dvc repro pipelines/reduced/dvc.yaml
	@cat reports/scoreboard.md

## replicate-full: the full replication (GPUs, real datasets): the same as `dvc repro`
replicate-full: setup
	$(BIN)/dvc repro

## test: the test suite, notebooks executed by papermill on the reduced profile included
test: setup
	$(BIN)/python -m pytest -q --durations=40

## lab: JupyterLab on the notebooks
lab: setup
	$(BIN)/jupyter lab notebooks/
