# The README's commands. Each does its own set-up: a fresh clone needs nothing but python3.11.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PYTHONPATH := $(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: lifecycle team-lifecycle airflow test bench venv lock clean

lifecycle: $(STAMP)  ## generate data, run the lifecycle DAGs on the embedded default, print the outcome (ARGS=--help)
	$(PY) -m scripts.lifecycle $(ARGS)

team-lifecycle: $(STAMP)  ## the same lifecycle on the team topology on loopback: PostgreSQL, Redis, CeleryExecutor with 2 workers, S3 server, MLflow server with auth (ARGS=--help)
	$(PY) -m scripts.team_lifecycle $(ARGS)

airflow: $(STAMP)  ## the Airflow UI on http://127.0.0.1:8080 (admin / admin) over make lifecycle's runs; Ctrl-C stops it
	$(PY) -m scripts.airflow_ui

test: $(STAMP)  ## the whole test suite (real PostgreSQL, MLflow and Airflow runs)
	$(PY) -m pytest

bench: $(STAMP)  ## benchmarks (ratios against baselines measured in the same run)
	$(PY) -m bench.dataset_build
	$(PY) -m bench.training_throughput
	$(PY) -m bench.registration
	$(PY) -m bench.offline_eval
	$(PY) -m bench.object_storage
	$(PY) -m bench.models_page

venv: $(STAMP)

# torch first: the pinned CPU build lies on this machine's disk; otherwise pip would fetch a CUDA build.
$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

lock: $(STAMP)  ## re-resolve requirements.in into the full pinned requirements.txt
	$(PY) -m pip install --quiet -r requirements.in
	{ echo "# Full pinned lock of requirements.in (regenerate with: make lock). Python 3.11."; \
	  echo "# Install torch==2.13.0 first (the CPU build), then this file: see Makefile."; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.txt

clean:  ## remove local state: var/ (data, MLflow, Airflow homes, embedded PostgreSQL) and a local events database; keeps .venv
	if test -x $(PY); then $(PY) -m scripts.clean; else rm -rf var test-artifacts; fi
