"""Test setup: Triton runs under its interpreter when no GPU is visible (the variable must
be set before any @triton.jit decorator runs, i.e. before npht.kernels is imported)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import npht  # noqa: E402

IN_CI = bool(os.environ.get("CI"))


def backend_device(backend: str) -> torch.device:
    """The device a backend is tested on: cuda for cuda, triton on a GPU machine; cpu else."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def require_backend(backend: str) -> torch.device:
    """Skip (or, in CI, fail for the CPU-side backends) when a backend cannot run here."""
    info = npht.build_info()
    if backend == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
        if not info["cuda"]:
            pytest.fail("a GPU is present but npht._C was built without CUDA")
    elif backend in ("cpu", "triton") and not info[backend]:
        msg = f"backend {backend!r} unavailable: {info.get('compiled_error') or info.get('triton_error')}"
        if IN_CI:
            pytest.fail(msg)  # CI installs everything: a missing backend is a failure
        pytest.skip(msg)
    return backend_device(backend)


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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
