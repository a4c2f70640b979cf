# Two commands on a fresh machine with Python 3.11:  `make run`  and  `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The interpreter the venv is made from (`make PYTHON=...` to choose): the first of PYTHON_CANDIDATES
# that can make a venv.  The OS's own python3.11 comes first: distributions build it with profile-guided
# and link-time optimisation, pyenv's default build has neither, and Airflow's commands and the imports
# run ~10 % faster on the former (docs/benchmarks.md, "The interpreter").
PYTHON_CANDIDATES ?= /usr/bin/python3.11 $(shell command -v python3.11) $(shell command -v python3)
PYTHON ?= $(or $(firstword $(foreach p,$(PYTHON_CANDIDATES),$(if $(shell $(p) -c 'import ensurepip, venv' 2>/dev/null && echo y),$(p)))),python3.11)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# Local wheel folder where pip finds the CPU build of torch (uv needs it explicitly).
FIND_LINKS := $(shell pip config get global.find-links 2>/dev/null)
UV_LINKS := $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
STAMP := $(VENV)/.installed

# The machine forbids byte-code caching; that makes every Airflow/torch import pay
# the compile again (6 s -> 2.5 s). Keep the cache, out of the source tree.
unexport PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX := $(CURDIR)/.state/pycache

.PHONY: help install run pipeline airflow stack dags seed repro serve browser test test-profile test-fast bench lint typecheck lock clean

help:
	@echo "make run        install if needed, seed the demo warehouse, run tonight's retraining for every vertical"
	@echo "make test       install if needed, run the whole test suite"
	@echo "make test-profile  the same, then where its time and CPU went, per module and tier"
	@echo "make airflow    start Airflow standalone on http://localhost:8080 (user admin; see docs/airflow.md)"
	@echo "make stack      the production topology without Docker: CeleryExecutor, 2 workers, PostgreSQL, Redis, S3, SMTP (docs/production.md)"
	@echo "make dags       regenerate dags/<vertical>.py from verticals/*.yaml (after adding or removing a spec)"
	@echo "make pipeline   the same nightly run without Airflow (CLI)"
	@echo "make serve      the scoring API on http://127.0.0.1:8090 (docs/serving.md)"
	@echo "make bench      every budget measured against a baseline in the same run (BENCH_ARGS=--quick: a smoke run)"
	@echo "make lint       ruff and mypy"

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -q --python $(BIN)/python $(UV_LINKS) -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

install: $(STAMP)

seed: install
	@$(BIN)/python -m pipelines seed

# Tonight's run (logical date = yesterday, UTC) of every vertical's DAG through Airflow
# (dag.test on the embedded defaults: SQLite metadata DB in .state/airflow), then the decision table.
run: seed dags
	@$(BIN)/python -m pipelines.orchestration run all

# One generated 3-line DAG file per spec, so a broken spec is an import error of its own file only.
dags: install
	@$(BIN)/python -m pipelines.orchestration dags

# Airflow UI + scheduler + dag-processor + triggerer on http://localhost:8080, same DAGs and data root.
airflow: install dags
	$(BIN)/python -m pipelines.orchestration standalone

# The production topology on this machine, without Docker: api-server, scheduler, dag-processor,
# triggerer and two Celery workers (each its own empty home) on the machine's PostgreSQL and Redis,
# S3 (SeaweedFS) and SMTP (aiosmtpd) on loopback.  Ports and databases: PIPELINES_STACK_* (docs/production.md).
stack: install dags
	$(BIN)/python -m pipelines.orchestration stack

pipeline: seed
	$(BIN)/python -m pipelines run all

# The same stages through DVC in the experiment profile (.state/experiments/: own registry,
# bucket, DVC remote and outbox; reads the warehouse read-only; never deploys or mails; see
# dvc.yaml). Seeds the demo warehouse only where there is none, never over an existing one.
repro: install
	$(BIN)/python -m pipelines.experiment seed-if-missing
	PATH="$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(BIN):$$PATH" $(BIN)/dvc metrics show

# The scoring API on http://127.0.0.1:8090 (/docs, /v2, /v1/<vertical>/predict) over every
# production model in the bucket; hot-reloads on promotion and rollback (PIPELINES_SCORING_* vars).
serve: install
	$(BIN)/python -m pipelines serve $(SERVE_ARGS)

# The real-browser tier (tests/browser) drives the OS's Chromium: Playwright cannot download its own offline.
# Installed here when missing and we are root; otherwise that tier is skipped and pytest says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && export DEBIAN_FRONTEND=noninteractive && \
	  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }; } || \
	  echo "chromium is missing and could not be installed: tests/browser will be skipped (apt-get install -y chromium)"

# pytest-xdist, one worker per core by default: each test module (or golden-state group) stays on one
# worker, slow tiers queued first (tests/conftest.py). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-n 0,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: install browser
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# `make test` that also says where the suite's time goes: each test's wall time and the machine's busy
# CPU (its servers included), summed per module and tier, a table at the end and .state/test-profile/summary.json
# (tests/suite_profile.py), then the same CPU per kind of process (tests/process_cpu.py).  A module's CPU is
# its own only with TEST_WORKERS=0.
test-profile: install browser
	PIPELINES_TEST_PROFILE=$(CURDIR)/.state/test-profile $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not airflow" $(PYTEST_ARGS)

# Every figure of ARCHITECTURE's budgets as a ratio against a baseline measured in the same run
# (docs/benchmarks.md): a table on stdout, JSON in .state/bench/results.json.  Minutes; not part of `make test`.
bench: install
	$(BIN)/python benchmarks/harness.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check pipelines dags plugins tests
	$(BIN)/ruff format --check pipelines dags plugins tests
	$(BIN)/mypy

# Re-resolve the pins (then review the diff). torch stays the local CPU build.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 $(UV_LINKS) -o requirements.lock
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements.lock

clean:
	rm -rf .state
