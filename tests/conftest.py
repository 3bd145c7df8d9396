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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
