# Set-up, demo and tests. Every target builds the environments it needs first.
#   make demo        run the daily SID refresh DAG twice on generated data (no external services)
#   make test        run the whole test suite (what CI runs)
#   make train-demo  build .venv-train and run the CPU training demo on the demo's data
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRAIN_VENV := .venv-train
TRAIN_BIN := $(TRAIN_VENV)/bin
TRAIN_STAMP := $(TRAIN_VENV)/.installed

.PHONY: setup train-env demo train-demo test clean-demo

$(STAMP): requirements/airflow.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/airflow.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# torch is pinned in the same pip call as llamafactory, so pip takes the CPU wheel on disk
# instead of pulling a CUDA build; trim_train_env.sh then drops the CUDA-only extras.
$(TRAIN_STAMP): requirements/train.txt pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_BIN)/python -m pip install --quiet --upgrade pip
	$(TRAIN_BIN)/python -m pip install --quiet -r requirements/train.txt
	scripts/trim_train_env.sh $(TRAIN_VENV)
	$(TRAIN_BIN)/python -m pip install --quiet --no-deps -e .
	touch $(TRAIN_STAMP)

train-env: $(TRAIN_STAMP)

demo: setup
	scripts/run_demo.sh

train-demo: setup train-env
	scripts/run_train_demo.sh

test: setup train-env
	$(BIN)/python -m pytest --ignore=tests/training
	$(TRAIN_BIN)/python -m pytest tests/training

clean-demo:
	rm -rf var/demo
