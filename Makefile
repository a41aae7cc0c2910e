# Set-up, demo and test commands. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
WORKSPACE ?= workspace/quickstart.zarr
BIN = $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup  ## ingest the quick-start data, train, predict, attribute, draw the maps
	$(BIN)/xaiflow ingest configs/quickstart.yaml --workspace $(WORKSPACE)
	$(BIN)/xaiflow train configs/quickstart.yaml --workspace $(WORKSPACE)
	$(BIN)/xaiflow attribute configs/quickstart.yaml --workspace $(WORKSPACE)
	$(BIN)/xaiflow show $(WORKSPACE) --dataset synthetic --out workspace/quickstart-saliency.png

test: setup  ## the whole test suite, slow end-to-end tests included
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) workspace
