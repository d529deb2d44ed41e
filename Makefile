# dna_fast: `make run` and `make test` set everything up on a fresh machine (idempotent; quick on a second call).
#   make run       .venv + pinned deps + package + extension (+ Debian's dataset-fashion-mnist where apt-get runs
#                  as root), then `python -m dna_fast.train` (embedded default: Fashion-MNIST, else the digits)
#   make test      the same set-up, then the Python tests (GPU tests skip without a GPU) and the C++ tests
#                  (ASan + UBSan), which include the CUDA kernels run in the CPU emulator (docs/emulator.md)
#   make test-cuda       only the CUDA kernels in the emulator (ASan + UBSan; also in random block / thread order)
#   make test-cuda-tsan  the same under ThreadSanitizer (a missing __syncthreads is a data race); not in make test
#   make bench     pytest benchmarks --benchmark-only
#   make bench-gpu build with CUDA and run every GPU benchmark; writes benchmarks/results/<device>-<date>.json
#   make gpu-check the one GPU check of a bare GPU machine, its own torch, <= 6 min (docs/gpu_check.md);
#                  GPU_CHECK_ARGS=--dry-run runs it anywhere with CPU stand-ins
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.dna_fast
CSRC := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)
export MAX_JOBS ?= 2
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
CMAKE_BUILD := build/cmake
PYTEST_ARGS ?=

.PHONY: setup run test test-py test-cpp test-cuda test-cuda-tsan bench bench-gpu gpu-check lint clean

setup: $(STAMPS)/package $(STAMPS)/ext

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMPS)/deps: requirements.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@mkdir -p $(STAMPS) && touch $@

# The package in editable mode without compiling (the extension is built in place below, incrementally by ninja).
$(STAMPS)/package: $(STAMPS)/deps pyproject.toml setup.py
	DNA_FAST_SKIP_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $@

# Rebuilt only when csrc/ or setup.py changed; a compile error fails here, loudly.
$(STAMPS)/ext: $(STAMPS)/deps setup.py $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

# Fashion-MNIST for the embedded run: Debian's dataset-fashion-mnist where apt-get runs as root; elsewhere the run
# says how to get it and uses the digits. Tried once (the stamp), a failure is only a note.
FMNIST_DIR := /usr/share/datasets/fashion-mnist
$(STAMPS)/data: | $(PY)
	@if [ ! -d $(FMNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "installing dataset-fashion-mnist (Fashion-MNIST for the embedded run)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist > /dev/null 2>&1 \
		|| { apt-get update -q > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist > /dev/null 2>&1; } \
		|| echo "note: could not install dataset-fashion-mnist; make run uses the digits"; \
	fi
	@mkdir -p $(STAMPS) && touch $@

run: setup $(STAMPS)/data
	$(PY) -m dna_fast.train

test: test-py test-cpp

test-py: setup
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# libtorch's CMake config (a CUDA build) needs the toolkit: ask nvcc where it lives; without nvcc, tests only.
CUDA_ROOT := $(shell nvcc -v --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/.*_HERE_=//p' | head -1 | xargs -r dirname)
CMAKE_ARGS := -DSANITIZE=ON $(if $(CUDA_ROOT),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_ROOT),-DBUILD_OPS=OFF)

test-cpp: $(STAMPS)/deps
	cmake -S . -B $(CMAKE_BUILD) $(CMAKE_ARGS) \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS) > /dev/null
	ctest --test-dir $(CMAKE_BUILD) -j $(MAX_JOBS) --output-on-failure

# The CUDA kernels in the emulator alone (no libtorch, no GPU): the test-cpp build, its emulator targets only.
test-cuda: $(STAMPS)/deps
	cmake -S . -B $(CMAKE_BUILD) $(CMAKE_ARGS) \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)" > /dev/null
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS) --target cudasim_tests > /dev/null
	ctest --test-dir $(CMAKE_BUILD) -L cudasim -j $(MAX_JOBS) --output-on-failure

test-cuda-tsan:
	cmake -S . -B $(CMAKE_BUILD)-tsan -DTSAN=ON -DBUILD_OPS=OFF \
		$(if $(CUDA_ROOT),-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_ROOT)) > /dev/null
	cmake --build $(CMAKE_BUILD)-tsan -j $(MAX_JOBS) --target cudasim_tests > /dev/null
	ctest --test-dir $(CMAKE_BUILD)-tsan -L cudasim -j $(MAX_JOBS) --output-on-failure

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only -q -s $(PYTEST_ARGS)

bench-gpu: setup
	$(PY) -m benchmarks.gpu.run

# No setup: it uses the torch installed on the GPU machine and builds the extension itself (sm_90, MAX_JOBS=nproc).
GPU_CHECK_ARGS ?=
gpu-check:
	bash benchmarks/gpu/check.sh $(GPU_CHECK_ARGS)

lint:
	$(PY) -m ruff check dna_fast tests benchmarks

clean:
	rm -rf build $(STAMPS) dna_fast/_C*.so
