# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: venv demo demo-reset test test-fast lint format dev migrate bench bench-shops bench-startup reference clean

venv: $(STAMP)

# Reinstall when the lock or the project metadata changes, never otherwise.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Refreshed whenever the repository's dagster.yaml changes.
$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# Builds .demo/shop.db from scratch and runs the job once on the local instance.
demo: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m regularization_pipeline.demo

# Puts .demo/shop.db back in its seeded state without running the job: orphans to launch on.
demo-reset: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m regularization_pipeline.demo --reset

# Style is enforced, not suggested: `ruff format` (line length 100) and the lint rules.
lint: venv
	$(BIN)/ruff format --check regularization_pipeline tests bench tools
	$(BIN)/ruff check regularization_pipeline tests bench tools

# Rewrites the files in place: run it before committing.
format: venv
	$(BIN)/ruff format regularization_pipeline tests bench tools
	$(BIN)/ruff check --fix regularization_pipeline tests bench tools

test: venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The inner loop: no browser, no deployment topology, no long scenario (marked slow), on
# both cores. Every database still counts: SQLite, PostgreSQL and MariaDB.
test-fast: venv
	$(BIN)/pytest -m "not slow and not browser and not deployment" -n 4 -q $(PYTEST_ARGS)

# The UI on http://127.0.0.1:$DAGSTER_PORT (3000) with the scheduler and sensors; the demo shop
# and its handlers unless REGULARIZATION_DATABASE_URL names another database. DEMO_ENV is the
# environment docs/launching.md gives the CLI and a plain `dagster dev` (tests/docs keep them equal).
# Started from $(DAGSTER_HOME), where the instance's dagster.yaml is, so `dagster dev` finds
# no stray one in the current folder. Its "superseded by dg dev" warning is silenced:
# `dg dev` needs dagster-dg-cli and a dg project layout (neither is in requirements.lock);
# `dagster dev` still does the same.
DEMO_ENV := REGULARIZATION_DATABASE_URL=sqlite:///$(CURDIR)/.demo/shop.db REGULARIZATION_PUBLISHERS=python \
	REGULARIZATION_PYTHON_HANDLERS=regularization_pipeline.demo.handlers:enroll,regularization_pipeline.demo.handlers:notify,regularization_pipeline.demo.handlers:activate_subscription

dev: venv $(DAGSTER_HOME)/dagster.yaml
	cd $(DAGSTER_HOME) && $(if $(REGULARIZATION_DATABASE_URL),,$(DEMO_ENV)) \
	PYTHONWARNINGS='ignore:Function `dev_command` is superseded:FutureWarning' \
		$(CURDIR)/$(BIN)/dagster dev -w $(CURDIR)/workspace.yaml -h 127.0.0.1 -p $${DAGSTER_PORT:-3000}

# The benchmark suite on a million-order PostgreSQL shop (BENCH_DATABASE_URL, default a
# `regbench` database on 127.0.0.1, created if missing), its throughput figures also on a
# MariaDB shop of the same shape (BENCH_MARIADB_URL, default `regbench` on 127.0.0.1:3306;
# BENCH_ARGS="--mariadb-url ''" leaves it out). Its last line says how long it took.
# Not part of `make test`, which runs it at --quick size so it cannot rot.
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Many shops (50 PostgreSQL databases of 1,000 orphans, one tick, 1, 2 and 4 runs at a time)
# and start-up (loading the code location, an empty run beside a trivial Dagster job).
bench-shops: venv
	$(BIN)/python -m bench.shops $(BENCH_ARGS)

bench-startup: venv
	$(BIN)/python -m bench.startup $(BENCH_ARGS)

# docs/reference.md from the code (CLI, run config, variables, definitions, metadata keys);
# tests/docs/test_reference.py fails until it is regenerated after a change.
reference: venv
	$(BIN)/python -m tools.reference

migrate: venv
	$(BIN)/regularize-completed-orders migrate

clean:
	rm -rf $(VENV) .dagster_home .demo
