# Two commands set up a fresh machine:
#   make demo   installs hpcdask in .venv and runs a real computation on a LocalCluster
#   make test   installs everything the tests need (packages, SLURM, SGE, MPI) and runs them all
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test venv lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)

demo: $(PY)
	$(PY) -m pip install -q -e .
	$(PY) examples/demo.py

test: $(PY)
	$(PY) -m pip install -q -e ".[test]"
	bash ci/services.sh $(VENV)
	$(PY) -m ruff check hpcdask tests benchmarks examples
	$(PY) -m ruff format --check hpcdask tests benchmarks examples
	$(PY) -m mypy
	$(PY) -m pytest -q

lint: $(PY)
	$(PY) -m ruff check hpcdask tests benchmarks examples
	$(PY) -m ruff format --check hpcdask tests benchmarks examples
	$(PY) -m mypy
