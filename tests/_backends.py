"""Backend helpers of the op tests, and a loader of the repository's scripts (importable as
`_backends`: the sub-folders' conftest.py files shadow the name `conftest`)."""

import importlib.util
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import npht

IN_CI = bool(os.environ.get("CI"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The name the cpu backend's compiled kernels give themselves in error messages: "cuda" when
# NPHT_CUDA_EMU makes them csrc's CUDA kernels under the emulator (tests/conftest.py).
CPU_KERNELS = "cuda" if os.environ.get("NPHT_CUDA_EMU") else "cpu"


def load_script(folder: str, name: str):
    """The module of ``<repository>/<folder>/<name>.py`` (benchmarks/, tools/: scripts, not a
    package), loaded by path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, folder, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


class OpCalls(TorchDispatchMode):
    """Records every op call ``(str(op), args)`` run under it: which gradients a registered
    op was asked for, and which tensors aten allocated."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


def close(actual, expected, rtol=1e-10, atol=1e-10):
    """assert_close over (nested) tuples and lists of tensors; expected moved to actual's
    device."""
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            close(a, e, rtol, atol)
        return
    torch.testing.assert_close(actual, expected.to(actual.device), rtol=rtol, atol=atol)


def interrupted_savez(path, **arrays):
    """A stand-in for np.savez_compressed that writes part of an archive and is then
    interrupted (Ctrl-C): what atomic writers must not leave behind."""
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 part of an archive")
    raise KeyboardInterrupt


def call_counter(calls: dict):
    """``counting(name, fn)``: ``fn`` wrapped to add 1 to ``calls[name]`` on each call (for
    monkeypatching a function whose calls a test counts)."""
    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    return counting
