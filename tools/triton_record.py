"""pytest plugin of tools/triton_check.py: records every Triton kernel launch that the
tests make under the interpreter (TRITON_INTERPRET=1) as the kernel's module and name, the
type of each argument (pointer element type, integer width, float) or the value of each
constexpr, and the launch options (num_warps). Written to the pickle file named by
NPHT_TRITON_SPECS at exit. Loaded with ``-p triton_record`` (tools/ on PYTHONPATH).

When NPHT_TRITON_PASSED names a file and the whole session passed, the node ids of the
tests that passed are written there, one per line (``make test`` then leaves them out of
its main run: they just ran, with the GPU's block sizes)."""

from __future__ import annotations

import atexit
import inspect
import os
import pickle

import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

_PTR = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
        torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
        torch.bool: "i1"}
_SPECS: dict = {}
_run = InterpretedFunction.run


def _is_constexpr(annotation) -> bool:
    return annotation is tl.constexpr or (isinstance(annotation, str) and "constexpr" in annotation)


def arg_type(value, annotation) -> str:
    """Triton signature type of one non-constexpr argument."""
    if isinstance(annotation, tl.dtype):  # e.g. `scale: tl.float64`
        return str(annotation)
    if isinstance(value, torch.Tensor):
        return "*" + _PTR[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type a kernel argument of type {type(value).__name__}")


def _recording_run(self, *args, grid, warmup, **kwargs):
    sig = inspect.signature(self.fn)
    options = {k: v for k, v in kwargs.items() if k not in sig.parameters}
    bound = sig.bind(*args, **{k: v for k, v in kwargs.items() if k not in options})
    bound.apply_defaults()
    spec = []
    for name, param in sig.parameters.items():
        value = bound.arguments[name]
        if _is_constexpr(param.annotation):
            spec.append((name, "constexpr", value))
        else:
            spec.append((name, arg_type(value, param.annotation), None))
    key = (self.fn.__module__, self.fn.__name__, tuple((n, t, repr(c)) for n, t, c in spec),
           tuple(sorted(options.items())))
    _SPECS[key] = (self.fn.__module__, self.fn.__name__, spec, options)
    return _run(self, *args, grid=grid, warmup=warmup, **kwargs)


InterpretedFunction.run = _recording_run


_PASSED: list = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _PASSED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("NPHT_TRITON_PASSED")
    if path and exitstatus == 0 and _PASSED:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(n + "\n" for n in sorted(set(_PASSED))))


@atexit.register
def _dump():
    path = os.environ.get("NPHT_TRITON_SPECS")
    if path:
        with open(path, "wb") as f:
            pickle.dump(list(_SPECS.values()), f)
