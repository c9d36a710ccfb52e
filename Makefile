# Entry points, all self-installing into .venv:
#   make demo      index the packaged demo dataset on embedded Qdrant Edge and rerank for one user
#   make test      lint and run the fast tier (no real encoder, no processes; about a minute)
#   make test-all  lint and run every test: the slow and system tiers too (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.p4r-installed
export OMP_WAIT_POLICY ?= PASSIVE
# Test temp folders on tmpfs when there is one (the Edge tests fsync a lot); else the default.
# `make test TEST_TMPDIR=` keeps the default.
TEST_TMPDIR ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm)
PYTEST := $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR) )$(BIN)/python -m pytest

.PHONY: demo test test-all install clean

install: $(STAMP)

# torch first, pinned: pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[encoder,onnx,eval,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/p4r index upsert --dataset demo
	$(BIN)/p4r query rerank --dataset demo --user-id u-chloe \
		--candidates crumb-and-co,ironwood-steakhouse,polar-scoop-gelato,sunny-side-diner,taqueria-sol,tide-sushi,noodle-harbor

# The fast tier is pytest's default selection (pyproject: -m 'not slow and not system').
test: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) -q

# -m "" replaces that selection with none: every tier.
test-all: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) -q -m ""

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
