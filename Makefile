# The two commands of the README's quick start: `make demo` and `make test`.
# Both set up everything on a fresh machine with Python 3.11+, pip and make.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The dev venv gets every provider but Airflow's (tested in its own venv, .peers/airflow: its pins
# would fight ours); the wheels are built for all of them.
WHEEL_PROVIDERS := $(wildcard providers/*/pyproject.toml)
PROVIDERS := $(filter-out providers/airflow/pyproject.toml,$(WHEEL_PROVIDERS))

.PHONY: setup demo test lint typecheck unit bench wheels clean

$(STAMP): pyproject.toml $(PROVIDERS)
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is needed (set PYTHON=...)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
		echo "venv is unavailable; trying virtualenv"; \
		$(PYTHON) -m pip install --user -q virtualenv && $(PYTHON) -m virtualenv $(VENV); }
	@# The pip a venv starts with may be old (23.x with Python 3.11): its resolver dead-ends on the
	@# cloud SDKs' opentelemetry pins beside mlflow's ("InconsistentCandidate"); a current one
	@# resolves the same requirements in seconds.
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade "pip>=25"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]" \
		$(foreach p,$(PROVIDERS),-e ./$(patsubst %/,%,$(dir $(p))))
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install mlrollout (editable) with the dev tools

demo: $(STAMP)  ## two sandbox rollouts: one rolled back, one promoted
	$(BIN)/mlrollout demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck unit  ## ruff, mypy (strict on the core), the whole pytest suite

bench: $(STAMP)  ## benchmark figures (not timed tests); BENCH_ARGS="--runs 200" for a quick run
	@$(BIN)/python -c "import numpy" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/sandbox_traffic.py
	$(BIN)/python benchmarks/engine_speed.py
	$(BIN)/python benchmarks/engine_decisions.py
	$(BIN)/python benchmarks/decisions.py $(BENCH_ARGS)

wheels:  ## build the core and every provider as wheels in dist/ (then: pip install --find-links dist ".[aws]")
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is needed (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m pip wheel -q --no-deps -w dist . $(foreach p,$(WHEEL_PROVIDERS),./$(patsubst %/,%,$(dir $(p))))

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache dist
