# robustcert: `make demo` and `make test` each create the environment when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-all lint bench fashion-mnist clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev,sdp,ray]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m robustcert demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# Everything, the slow tests included.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

# Fashion-MNIST comes from Debian's package (no download at run time).
fashion-mnist:
	@test -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

bench: $(STAMP) fashion-mnist
	$(PY) bench/smoothing.py
	$(PY) bench/bounds.py

clean:
	rm -rf $(VENV) runs
