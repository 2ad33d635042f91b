# Set-up, demo and tests. Every target builds the Airflow env (.venv) first if needed.
#   make demo   run the daily SID refresh DAG twice on generated data (no external services)
#   make test   run the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean-demo

$(STAMP): requirements/airflow.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/airflow.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	scripts/run_demo.sh

test: setup
	$(BIN)/python -m pytest

clean-demo:
	rm -rf var/demo
