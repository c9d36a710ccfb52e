# Two entry points, both self-installing into .venv:
#   make demo   index the packaged demo dataset on embedded Qdrant Edge and rerank for one user
#   make test   lint and run the whole test suite (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.p4r-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install clean

install: $(STAMP)

# torch first, pinned: pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[encoder,onnx,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/p4r index upsert --dataset demo
	$(BIN)/p4r query rerank --dataset demo --user-id u-chloe \
		--candidates crumb-and-co,ironwood-steakhouse,polar-scoop-gelato,sunny-side-diner,taqueria-sol,tide-sushi,noodle-harbor

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
