"""Which backends exist, and which one a call uses.

Every op has four backends with one meaning: ``cuda`` (csrc), ``triton`` (kernels/),
``cpu`` (csrc, at::parallel_for) and ``reference`` (npht/reference, pure PyTorch).
``backend="auto"`` picks cuda > triton > reference for GPU tensors and cpu for CPU tensors.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")


class BackendUnavailableError(ValueError, RuntimeError):
    """A backend was asked for by name but was not built (or cannot be imported) here. A
    ValueError (the ``backend`` argument names something this install cannot do) that is
    also a RuntimeError, as it was before it had its own class."""


def under_transform(*tensors) -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, jvp, jacfwd) encloses this
    call or one of ``tensors`` is a forward-mode AD dual tensor. torch.library's autograd
    wrapper of a registered op is refused by functorch (pytorch/pytorch#168393) and drops
    forward-mode tangents without a word, so the ops take another path there. False while
    torch.compile traces (the registered ops are what it must see)."""
    if torch._C._are_functorch_transforms_active():
        return True
    if torch.compiler.is_compiling():
        return False
    unpack = torch.autograd.forward_ad.unpack_dual
    return any(t is not None and unpack(t).tangent is not None for t in tensors)


def forward_mode(*tensors) -> bool:
    """Whether forward-mode AD is at work: a torch.func forward-mode transform (jvp, jacfwd)
    encloses this call, or one of ``tensors`` is a dual tensor."""
    if torch.compiler.is_compiling():
        return False
    if not torch._C._are_functorch_transforms_active():
        unpack = torch.autograd.forward_ad.unpack_dual
        return any(t is not None and unpack(t).tangent is not None for t in tensors)
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
        return any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters())
    except (ImportError, AttributeError):  # private API: without it, torch's own error follows
        return False


class OpaqueArgs:
    """The ops' non-tensor arguments, held as one opaque object: functorch flattens tuples
    and lists of an autograd.Function's inputs as pytrees, which the tangents of its
    forward-mode rules would then not line up with."""

    __slots__ = ("values",)

    def __init__(self, values: tuple):
        self.values = values


def _load_compiled():
    """The compiled extension (or the ImportError explaining why it is missing), probed
    once at import so that backend choice is plain Python that torch.compile can trace."""
    try:
        mod = importlib.import_module("npht._C")
    except ImportError as exc:  # not built (e.g. a source checkout without `pip install`)
        return None, exc, {"cpu": False, "cuda": False}
    info = dict(kv.split("=", 1) for kv in torch.ops.npht_C.build_info().split(";"))
    return mod, None, {"cpu": True, "cuda": info.get("cuda") == "1"}


_C_MODULE, _C_ERROR, _C_INFO = _load_compiled()


def _compiled():
    return _C_MODULE, _C_ERROR


def _compiled_info() -> dict:
    return _C_INFO


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# op name -> (Triton kernel module, reference module) implementing its raw-kernel contract
_MODULES = {
    "triplane": ("npht.kernels.triplane", "npht.reference.triplane"),
    "composite": ("npht.kernels.composite", "npht.reference.render"),
    "sampler": ("npht.kernels.sampler", "npht.reference.sampler"),
    "mlp": ("npht.kernels.mlp", "npht.reference.mlp"),
    # the MLP's matrix products with fused prologues/epilogues (no reference module: the
    # op's torch route is the reference)
    "mlp_mm": ("npht.kernels.mlp_mm", None),
}


@functools.lru_cache(maxsize=None)
def _triton(op: str = "triplane"):
    """The Triton kernel module of ``op``, or (None, error). Imported on first use
    (triton is heavy)."""
    try:
        return importlib.import_module(_MODULES[op][0]), None
    except Exception as exc:  # ImportError, or triton failing to initialise
        return None, exc


@torch.compiler.assume_constant_result
def _triton_available() -> bool:
    return _triton()[0] is not None


def build_info() -> dict:
    """Which backends this installation has.

    Returns a dict with ``cpu`` / ``cuda`` (compiled kernels present), ``triton``
    (importable), ``triton_interpret`` (Triton runs on CPU through its interpreter),
    ``cuda_available`` (a GPU is visible now), the torch/triton versions, and
    ``compiled_error`` when the extension could not be loaded.
    """
    mod, err = _compiled()
    info = _compiled_info()
    triton_mod, triton_err = _triton()
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    out = {
        "cpu": info["cpu"],
        "cuda": info["cuda"],
        "triton": triton_mod is not None,
        "triton_interpret": triton_interpreted(),
        "reference": True,
        "cuda_available": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton_version": triton_version,
    }
    if err is not None:
        out["compiled_error"] = str(err)
    if triton_err is not None:
        out["triton_error"] = str(triton_err)
    return out


def resolve_backend(backend: str, device: torch.device) -> str:
    """Validate ``backend`` for tensors on ``device`` and resolve ``"auto"``."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    is_cuda = device.type == "cuda"
    if backend == "auto":
        if is_cuda:
            if _compiled_info()["cuda"]:
                return "cuda"
            if _triton_available():
                return "triton"
            return "reference"
        if device.type == "cpu" and _compiled_info()["cpu"]:
            return "cpu"
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        if not _compiled_info()["cpu"]:
            raise BackendUnavailableError(
                "backend='cpu' is not available: the npht._C extension is not built "
                f"({_compiled()[1]}); install with `pip install --no-build-isolation .`"
            )
    elif backend == "cuda":
        if not is_cuda:
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if not _compiled_info()["cuda"]:
            raise BackendUnavailableError(
                "backend='cuda' is not available: npht._C was built without CUDA "
                "(rebuild where torch has CUDA and nvcc is found, or set NPHT_CUDA=1 to force)"
            )
    elif backend == "triton":
        if not _triton_available():
            raise BackendUnavailableError(f"backend='triton' is not available: {_triton()[1]}")
        if not is_cuda and not triton_interpreted():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got {device}); on CPU it runs only "
                "under the interpreter, with TRITON_INTERPRET=1 set before npht is imported"
            )
    return backend


def kernels(backend: str, op: str = "triplane"):
    """The module implementing the raw-kernel contract of ``op`` for ``backend``."""
    if backend in ("cpu", "cuda"):
        return torch.ops.npht_C
    if backend == "triton":
        mod, err = _triton(op)
        if mod is None:
            raise BackendUnavailableError(f"backend='triton' is not available for {op}: {err}")
        return mod
    return importlib.import_module(_MODULES[op][1])
