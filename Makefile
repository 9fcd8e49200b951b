# The two commands of the README: `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: deps demo test lint unit integration clean deb package-test

deps:
	@VENV=$(VENV) bash tests/deps.sh

demo: deps
	$(PY) -m tests.lab demo $(DEMO_ARGS)

lint: deps
	$(PY) -m ruff check pve_mirror tests bench
	$(PY) -m ruff format --check pve_mirror tests bench
	$(PY) -m mypy

unit: deps
	$(PY) -m pytest -q tests/unit

integration: deps
	$(PY) -m pytest -q tests/integration

test: lint
	$(PY) -m pytest -q tests

deb:
	bash .ci/package-test.sh build

package-test:
	bash .ci/package-test.sh

clean:
	rm -rf .venv .lab .mypy_cache .ruff_cache .pytest_cache .pybuild build *.egg-info
