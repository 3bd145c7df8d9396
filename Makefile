# The README's commands. `make demo` and `make test` each install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU wheel on these machines; any torch already installed is kept as it is.
TORCH_SPEC ?= torch==2.13.0
NVCC ?= nvcc
CUDA_ARCHS ?= 80 90
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: torch install install-test install-bench test demo bench cuda-check clean

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"

install: torch
	$(PIP) install -q setuptools wheel ninja numpy tqdm
	$(PIP) install -q --no-build-isolation -e .

install-test: install
	$(PIP) install -q pytest expecttest hypothesis "triton>=3.0"

install-bench: install
	$(PIP) install -q matplotlib "triton>=3.0"

test: install-test cuda-check
	$(PYTHON) -m pytest -q tests

# The main job, until the end-to-end demo exists: the tri-plane benchmark on this machine.
demo: install-bench
	$(PYTHON) benchmarks/triplane.py --plot

bench: install-bench
	$(PYTHON) benchmarks/triplane.py --plot

# Compile every CUDA kernel for each architecture without a GPU (kernels include no torch).
cuda-check:
	@if ! command -v $(NVCC) >/dev/null 2>&1; then \
		echo "cuda-check: nvcc not found, CUDA kernels not compile-checked"; exit 0; fi; \
	set -e; for cu in $$(find csrc -name '*.cu' | sort); do for a in $(CUDA_ARCHS); do \
		echo "nvcc sm_$$a $$cu"; \
		$(NVCC) -c -std=c++17 -O3 -arch=sm_$$a -Werror all-warnings -Icsrc/include -Icsrc $$cu -o /dev/null; \
	done; done

clean:
	rm -rf build dist *.egg-info npht/_C*.so
