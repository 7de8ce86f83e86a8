# Two commands for a fresh clone (README): `make demo` and `make test`.
# Both create .venv and install duckstage with its pinned dependencies first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test soak bench bench-backfill clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## the main job end to end on the embedded defaults, with synthetic data
	$(PY) -m stager.demo $(DEMO_ARGS)

test: $(VENV)/.installed  ## the package boundary (import-linter), then the default test run (slow soak and benchmarks excluded)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

soak: $(VENV)/.installed  ## the slow soak tests
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(VENV)/.installed  ## print throughput and memory figures (DuckDB file and DuckLake)
	$(PY) benchmarks/bench_stager.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_redis.py
	$(PY) benchmarks/bench_e2e.py
	$(PY) benchmarks/bench_lake.py
	$(PY) benchmarks/bench_history.py
	$(PY) benchmarks/bench_latency.py

bench-backfill: $(VENV)/.installed  ## the whole market's history, enqueue to committed, against the seed design and dlt; BACKFILL_ARGS="--years 2" for a quick run
	$(PY) benchmarks/bench_backfill.py $(BACKFILL_ARGS)

clean:
	rm -rf $(VENV) data/huey.db* data/staging data/archive data/quarantine data/deadletter data/run data/warehouse.duckdb*
