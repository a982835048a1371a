# The two entry points a fresh machine needs: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test lint typecheck layers crds verify-crds unit integration e2e clean

setup:
	@bash hack/setup.sh

demo: setup
	@$(PY) hack/demo.py

lint: setup
	$(BIN)/ruff check operator tests bench devenv
	$(BIN)/ruff format --check operator tests bench devenv

typecheck: setup
	$(BIN)/mypy

layers: setup
	$(BIN)/lint-imports

crds: setup
	$(BIN)/qorch crds --output-dir crds
	$(BIN)/qorch crds --output-dir charts/qorch/crds

verify-crds: setup
	$(BIN)/qorch crds --check --output-dir crds
	$(BIN)/qorch crds --check --output-dir charts/qorch/crds

test: setup lint typecheck layers verify-crds
	$(BIN)/pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: setup
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
