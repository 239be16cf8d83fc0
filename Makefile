# The two commands: `make run` (the embedded default, end to end) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: help venv image run history rollback test test-fast lint stop clean

help:
	@echo "make run        run abalone_retraining once on the embedded default (needs a Docker engine)"
	@echo "make history    every promotion and rollback of the model (the local MLflow server by default)"
	@echo "make rollback REASON='...' [VERSION=n]  move champion back (abalone_rollback, locally)"
	@echo "make test       every test, the Docker end-to-end ones included"
	@echo "make test-fast  the tests that need no Docker engine"
	@echo "make lint       ruff, with Airflow 3's AIR rules"
	@echo "make image      build the trainer image (on the DLC, or the stand-in without a registry)"
	@echo "make stop       stop the local MLflow server started by make run"

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml trainer/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -r requirements-dev.txt -e . -e trainer
	touch $@

venv: $(VENV)/.installed

image: venv
	PYTHON=$(PY) scripts/build-trainer-image.sh

run:  # the script checks for a Docker engine first, then makes the venv
	scripts/run-local.sh

history: venv
	@source scripts/env.sh && $(PY) -m abalone_pipeline.history

rollback: venv
	@test -n "$(REASON)" || { echo "usage: make rollback REASON='why' [VERSION=n]" >&2; exit 2; }
	@source scripts/env.sh && $(VENV)/bin/airflow dags test abalone_rollback \
		--conf "$$($(PY) -c 'import json,sys; print(json.dumps({"reason": sys.argv[1], "to_version": sys.argv[2]}))' "$(REASON)" "$(VERSION)")" \
		| grep -E "abalone_pipeline|rolled|cannot roll back|Marking run" ; $(PY) -m abalone_pipeline.history

test: venv image
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not e2e"

lint: venv
	$(VENV)/bin/ruff check bench dags include plugins tests trainer
	$(VENV)/bin/ruff format --check bench dags include plugins tests trainer

stop:
	@if [ -f .local/mlflow/server.pid ]; then kill $$(cat .local/mlflow/server.pid) 2>/dev/null || true; rm -f .local/mlflow/server.pid; fi

clean: stop
	rm -rf .local
