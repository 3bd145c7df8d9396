"""Public differentiable ops (registered with torch.library) and backend selection."""

from ._backend import BACKENDS, build_info
from .composite import CompositeResult, volume_composite
from .knn import PointTree
from .mlp import matmul_precision, softplus_mlp_with_grad
from .sampler import eb_bisect_beta, eb_merge, eb_upsample
from .triplane import PROJECTIONS, projection_from_plane_axes, resolve_projection, triplane_sample

__all__ = [
    "BACKENDS",
    "CompositeResult",
    "PROJECTIONS",
    "PointTree",
    "build_info",
    "eb_bisect_beta",
    "eb_merge",
    "eb_upsample",
    "matmul_precision",
    "projection_from_plane_axes",
    "resolve_projection",
    "softplus_mlp_with_grad",
    "triplane_sample",
    "volume_composite",
]
