# The README's two commands. Only python3 (>= 3.10) and make are needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := test,plot,ode,sklearn,scale,fit,docs

.PHONY: demo test conformance install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m widenets.apps.demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=25 tests

# neural-tangents 0.6.5's own public-API tests against this checkout
# (conformance/README.md; expected failures in conformance/expected_failures.txt).
conformance: $(VENV)/.installed
	bash conformance/run.sh $(BIN)/python -q -n 2

clean:
	rm -rf $(VENV) .pytest_cache
