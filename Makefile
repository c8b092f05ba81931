# The README's two commands. Only python3 (>= 3.10) and make are needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := test,plot,ode,sklearn,scale,fit,docs

.PHONY: demo test test-x64 conformance install clean

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

# The dtype-sensitive tests again with float64 enabled for the whole process
# (the library must be correct with jax_enable_x64 on or off; the full suite
# passes that way too, in about 11 minutes on 2 cores).
X64_TESTS := tests/stax/test_jit_transparent.py tests/stax/test_finite_checks.py \
	tests/stax/test_draws.py tests/stax/test_conv.py tests/stax/test_sharing.py \
	tests/stax/test_atan2.py tests/stax/test_activations_robust.py tests/predict \
	tests/test_monte_carlo.py tests/test_evidence.py
test-x64: $(VENV)/.installed
	JAX_ENABLE_X64=1 $(BIN)/python -m pytest -q -n 2 -m "not slow" $(X64_TESTS)

# neural-tangents 0.6.5's own public-API tests against this checkout
# (conformance/README.md; expected failures in conformance/expected_failures.txt).
conformance: $(VENV)/.installed
	bash conformance/run.sh $(BIN)/python -q -n 2

clean:
	rm -rf $(VENV) .pytest_cache
