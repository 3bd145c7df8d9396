"""Pure-PyTorch implementations of every npht op: the tests' oracle and the fallback."""

from .mlp import softplus_mlp, softplus_mlp_with_grad
from .triplane import (
    baseline_triplane_sum,
    eg3d_sample_from_planes,
    gather_bilinear,
    grid_sample_has_double_backward,
    triplane_sample,
)

__all__ = [
    "baseline_triplane_sum",
    "eg3d_sample_from_planes",
    "gather_bilinear",
    "grid_sample_has_double_backward",
    "softplus_mlp",
    "softplus_mlp_with_grad",
    "triplane_sample",
]
