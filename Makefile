# robustcert: `make demo` and `make test` each create the environment when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-all lint docs bench fashion-mnist clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,ray,sdp]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m robustcert demo --out runs/demo

# Lint and type checks gate the tests: a ruff or mypy finding fails `make test` (and CI).
test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy src
	$(PY) -m pytest -q

# Everything, the slow tests included.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy src

# docs/methods.md is generated from the method registry (a test checks it is current).
docs: $(STAMP)
	$(PY) -m robustcert.methods.docs > docs/methods.md

# Fashion-MNIST comes from Debian's package (no download at run time).
fashion-mnist:
	@test -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

bench: $(STAMP) fashion-mnist
	$(PY) bench/smoothing.py
	$(PY) bench/bounds.py

clean:
	rm -rf $(VENV) runs
