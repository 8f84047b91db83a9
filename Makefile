# `make demo` and `make test` each build .venv from nothing, then run.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,submitit,tensorboard]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/permsym count mlp:784-1024-1024-10 mlp:784-1024-1024-10,density=0.1,mask_seed=0 convnet:1x8x8-16-32-10 resmlp:64-128-10,blocks=2
	$(BIN)/permsym paper --scale quick --out reports/paper

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
