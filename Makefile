# Two entry points: `make demo` (setup + prepare + train + evaluate on the shipped data)
# and `make test` (setup if needed + the test suite). Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-dist demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[serve,test,report]'
	touch $(STAMP)

setup: $(STAMP)

# the `dist` extra (TorchRec, --sharded_embeddings): --no-deps, so pip leaves torch 2.13 alone
setup-dist: $(STAMP)
	$(BIN)/pip install -q --no-deps -c constraints.txt torchrec fbgemm-gpu-cpu tensordict torchmetrics \
		lightning-utilities pyre-extensions typing-inspect mypy-extensions cloudpickle pyvers

demo: $(STAMP)
	$(BIN)/dmirec demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info
