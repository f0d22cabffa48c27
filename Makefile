# Quick start: `make train` (set up + run the train pipeline), `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Kedro telemetry stays off for this project: no prompt, no network call.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install train test lint viz mlflow-ui clean-checkpoints

# pip only (torch==2.14.1 / torchvision==0.29.1 install from this machine's local wheels).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/kedro run --pipeline=train

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks

viz: install
	$(BIN)/kedro viz run

mlflow-ui: install
	@echo "Runs: http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean-checkpoints:
	rm -rf data/06_models/checkpoints
