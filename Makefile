# Two entry points: `make demo` (setup + prepare + train + evaluate on the shipped data)
# and `make test` (setup if needed + the test suite). Both create .venv themselves.
# `make docs` builds the documentation site (docs/, mkdocs.yml) into site/ with --strict.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: setup setup-dist demo test docs bench clean

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

# the `docs` extra (MkDocs + Material, pinned by constraints.txt), installed once like the setup stamp
$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

# broken links, missing pages and pages outside the nav are errors (--strict); nothing is fetched
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist site src/*.egg-info
