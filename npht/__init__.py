"""npht: fused tri-plane SDF ops for PyTorch (CUDA, Triton, CPU) and a neural parametric
head model toolkit built on them."""

__version__ = "0.1.0"

from ._mkl import resolve_vml_dispatch as _resolve_vml_dispatch  # noqa: E402

_resolve_vml_dispatch()  # before any threaded torch op: pytorch/pytorch#188792 (see _mkl.py)

from .ops import (  # noqa: E402
    BACKENDS,
    PROJECTIONS,
    CompositeResult,
    build_info,
    matmul_precision,
    projection_from_plane_axes,
    resolve_projection,
    softplus_mlp_with_grad,
    triplane_sample,
    volume_composite,
)

__all__ = [
    "BACKENDS",
    "CompositeResult",
    "PROJECTIONS",
    "__version__",
    "build_info",
    "matmul_precision",
    "projection_from_plane_axes",
    "resolve_projection",
    "softplus_mlp_with_grad",
    "triplane_sample",
    "volume_composite",
]
