# The two commands: `make run` (the embedded default, end to end) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The stack's helper needs only the standard library: any python3 can stop what make run started.
LOCAL_PY := $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: help venv image run trigger status history rollback test test-fast lint stop clean

help:
	@echo "make run        start (or reuse) the local Airflow + MLflow, run abalone_retraining once and follow it"
	@echo "                (needs a Docker engine); the stack stays up: Airflow UI on ABALONE_AIRFLOW_PORT (8080)"
	@echo "make trigger [CONF='{\"dry_run\": true}']  one more run on the running stack, followed to its end"
	@echo "make status     which local processes run, their health, the URLs"
	@echo "make history    every promotion and rollback of the model (the local MLflow server by default)"
	@echo "make rollback REASON='...' [VERSION=n]  move champion back (abalone_rollback, locally)"
	@echo "make test       every test, the Docker end-to-end ones included"
	@echo "make test-fast  the tests that need no Docker engine"
	@echo "make lint       ruff, with Airflow 3's AIR rules"
	@echo "make image      build the trainer image (on the DLC, or the stand-in without a registry)"
	@echo "make stop       stop the local Airflow processes and MLflow server started by make run"

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

trigger: venv
	@source scripts/env.sh && $(PY) scripts/local_airflow.py trigger --conf '$(or $(CONF),{})'

status:
	@source scripts/env.sh && $(LOCAL_PY) scripts/local_airflow.py status

history: venv
	@source scripts/env.sh && $(PY) -m abalone_pipeline.history

rollback: venv
	@test -n "$(REASON)" || { echo "usage: make rollback REASON='why' [VERSION=n]" >&2; exit 2; }
	@source scripts/env.sh && $(VENV)/bin/airflow dags test abalone_rollback \
		--conf "$$($(PY) -c 'import json,sys; print(json.dumps({"reason": sys.argv[1], "to_version": sys.argv[2]}))' "$(REASON)" "$(VERSION)")" \
		| grep -E "abalone_pipeline|rolled|cannot roll back|Marking run" ; $(PY) -m abalone_pipeline.history

test: venv image
	$(PY) -m pytest --durations=30

test-fast: venv
	$(PY) -m pytest -m "not e2e"

lint: venv
	$(VENV)/bin/ruff check bench dags include plugins scripts tests trainer
	$(VENV)/bin/ruff format --check bench dags include plugins scripts tests trainer

stop:  # stdlib only: works without the venv
	@source scripts/env.sh && $(LOCAL_PY) scripts/local_airflow.py stop

clean: stop
	@source scripts/env.sh && rm -rf "$$ABALONE_LOCAL_DIR"
