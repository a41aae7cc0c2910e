# Set-up, demo and test commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
WORKSPACE ?= workspace/quickstart.zarr
BIN = $(VENV)/bin
# test processes (pytest-xdist): one per core; each test file runs whole in one of them
TEST_PROCESSES ?= 2

.PHONY: setup demo test clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup  ## the whole pipeline on the quick-start data, in a Prefect UI on loopback (KEEP_SERVER=1 keeps the UI, the Dask dashboard and the figures up; Ctrl-C or SIGTERM stops all)
	$(BIN)/python deploy/demo.py --config configs/quickstart.yaml --workspace $(WORKSPACE)

test: setup  ## the whole test suite, slow end-to-end tests included
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile --durations=25

clean:
	rm -rf $(VENV) workspace
