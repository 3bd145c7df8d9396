"""Test setup: Triton runs under its interpreter when no GPU is visible (the variable must
be set before any @triton.jit decorator runs, i.e. before npht.kernels is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import npht  # noqa: E402

from _backends import IN_CI, backend_device, require_backend  # noqa: E402,F401


# The backends a parametrised test runs on; cuda tests carry the `cuda` marker.
BACKEND_PARAMS = [
    "reference",
    "cpu",
    "triton",
    pytest.param("cuda", marks=pytest.mark.cuda),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    require_backend(request.param)
    return request.param


@pytest.fixture
def device(backend):
    return backend_device(backend)


if os.environ.get("NPHT_CUDA_EMU"):
    # NPHT_CUDA_EMU=900 (or 800): the whole run's CPU kernels are csrc's CUDA kernels under the
    # emulator of tools/cuda_emu (sm_90 / sm_80 code), so the cpu-backend tests test those
    # (NPHT_CUDA_EMU_ASAN=1: its AddressSanitizer build; tools/cuda_emu/build.py --asan-pytest).
    from _backends import load_script as _load_script

    _emu_build = _load_script("tools/cuda_emu", "build")
    _EMU = _emu_build.load(asan=bool(os.environ.get("NPHT_CUDA_EMU_ASAN")))
    _emu_ctx = _emu_build.cpu_kernels_replaced(_EMU, int(os.environ["NPHT_CUDA_EMU"]))
    _emu_ctx.__enter__()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _passed_in_triton_check():
    """Node ids listed in the file NPHT_DESELECT_PASSED names (``make test`` points it at what
    tools/triton_check.py's record phase just ran and passed); empty without one."""
    path = os.environ.get("NPHT_DESELECT_PASSED")
    if not path or not os.path.exists(path):
        return set()
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


_LEFT_OUT = []


def pytest_collection_modifyitems(config, items):
    done = _passed_in_triton_check()
    dropped = [item for item in items if item.nodeid in done]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.nodeid not in done]
        _LEFT_OUT.extend(dropped)


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("NPHT_CUDA_EMU"):
        launches, threads = _EMU.stats()
        terminalreporter.write_line(f"NPHT_CUDA_EMU: the CPU kernels were the emulated CUDA kernels (sm_"
                                    f"{int(os.environ['NPHT_CUDA_EMU']) // 10}): {launches} launches, "
                                    f"{threads} threads")
    path = os.environ.get("NPHT_DESELECT_PASSED")
    if path:
        n = len(_LEFT_OUT)
        terminalreporter.write_line(
            f"NPHT_DESELECT_PASSED: {n} Triton tests passed in triton-check's record phase (GPU block sizes) "
            "and were left out of this run" if n else
            f"NPHT_DESELECT_PASSED: no test of {path} in this run (absent when no record phase ran)")
