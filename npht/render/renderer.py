"""The VolSDF normal-map renderer (thesis Sec. 4.2.2, MonoSDF formulation), written as the
thesis did: one ray per pixel, error-bound sampling inside the unit sphere, every sample
evaluated with grad, normals as normalised SDF gradients (autograd, ``create_graph`` when
a loss must reach the SDF's parameters), compositing in PyTorch. It is the reference the
fused, sample-efficient renderer is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

from npht.reference.render import composite
from npht.render.cameras import Cameras, _shape, generate_rays, ray_bounds, world_normals_to_camera
from npht.render.density import LaplaceDensity
from npht.render.sampler import ErrorBoundSampler

__all__ = ["RenderOutput", "render_reference", "sdf_and_gradient_autograd"]


@dataclass
class RenderOutput:
    """``normals [B, H, W, 3]`` (world space, or the camera convention asked for),
    ``depth [B, H, W]`` (distance along the ray), ``opacity [B, H, W]``,
    ``hit [B, H, W]`` (ray meets the bounding sphere)."""

    normals: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    hit: torch.Tensor


def sdf_and_gradient_autograd(sdf_fn: Callable, points: torch.Tensor, create_graph: bool):
    """``sdf_fn(points [B, N, 3]) -> [B, N]`` and its gradient w.r.t. the points by autograd."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("the normals are the SDF's gradient, taken by autograd, which torch.inference_mode() "
                           "switches off: render under torch.no_grad() instead (it keeps no graph either)")
    with torch.enable_grad():
        pts = points.detach().requires_grad_()
        sdf = sdf_fn(pts)
        if not (isinstance(sdf, torch.Tensor) and sdf.requires_grad):
            raise ValueError("sdf_fn's result does not depend on the points through autograd (detached, computed "
                             "under torch.no_grad(), or constant): the normals are its gradient w.r.t. the points")
        (grad,) = torch.autograd.grad(sdf.sum(), pts, create_graph=create_graph)
    return sdf, grad


def _check(cameras, sdf_batch: Optional[int]):
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be npht.render.Cameras, got {type(cameras).__name__}")
    if sdf_batch is not None and sdf_batch != len(cameras):
        raise ValueError(f"batch_size ({sdf_batch}) must equal the number of cameras ({len(cameras)})")


def check_density(density) -> None:
    if not callable(getattr(density, "get_beta", None)):
        raise TypeError(f"density must be an npht.render.LaplaceDensity (anything with get_beta()), got "
                        f"{type(density).__name__}")


def probe_sdf_batch(sdf_fn: Callable, like: torch.Tensor, B: int) -> None:
    """A clear error for an SDF callable of the wrong batch size (one shape per camera):
    ``sdf_fn`` is called once, without grad, on ``[B, 2, 3]`` zeros."""
    if not callable(sdf_fn):
        raise TypeError(f"sdf_fn must be callable, got {type(sdf_fn).__name__}")
    with torch.no_grad():
        probe = sdf_fn(like.new_zeros(B, 2, 3))
    if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != (B, 2):
        raise ValueError(f"sdf_fn must map points [B, N, 3] to [B, N] with B = {B} (one shape per "
                         f"camera); for points [{B}, 2, 3] it returned {_shape(probe)}")


def render_reference(sdf_fn: Callable, cameras: Cameras, density: LaplaceDensity,
                     sampler: Optional[ErrorBoundSampler] = None, *, bound_radius: float = 1.0, bound_box=None,
                     training: bool = False, generator: Optional[torch.Generator] = None,
                     convention: str = "world", batch_size: Optional[int] = None,
                     chunk: int = 1 << 18) -> RenderOutput:
    """Render normal maps of ``sdf_fn`` (``[B, N, 3] -> [B, N]``, shape b seen by camera b)
    at ``cameras.height x cameras.width``. Rays that miss the bounding sphere (or the box
    ``[-bound_box, bound_box]`` when given, as in VolSDFRenderer) are empty (opacity 0).
    Differentiable w.r.t. the SDF's parameters (through the normals: double backward) and
    the density's beta when grad mode is on. ``convention``: ``"world"``,
    ``"opencv"`` or ``"opengl"`` (pyrender's camera frame)."""
    _check(cameras, batch_size)
    check_density(density)
    # the thesis' renderer: the sampler's per-ray math in plain PyTorch too
    sampler = sampler or replace(ErrorBoundSampler.thesis(), backend="reference")
    B, H, W = len(cameras), cameras.height, cameras.width
    origins, dirs = generate_rays(cameras)
    origins, dirs = origins.reshape(B, H * W, 3), dirs.reshape(B, H * W, 3)
    probe_sdf_batch(sdf_fn, origins, B)
    near, far, hit = ray_bounds(origins, dirs, bound_radius, bound_box)
    # rays missing the bounds: a zero-length segment at the closest approach; they are
    # masked out of the result (the reference still evaluates them, as the thesis did)
    z = sampler(sdf_fn, origins, dirs, near, far, density.get_beta(), training=training,
                generator=generator, chunk=chunk)  # [B, HW, S]
    S = z.shape[-1]
    points = (origins[:, :, None] + z[..., None] * dirs[:, :, None]).reshape(B, H * W * S, 3)
    create = torch.is_grad_enabled()
    sdf, grad = sdf_and_gradient_autograd(sdf_fn, points, create)
    normals = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rendered, depth, opacity, _ = composite(sdf.reshape(B * H * W, S), z.reshape(B * H * W, S),
                                            density.get_beta(), normals.reshape(B * H * W, S, 3))
    mask = hit.reshape(B * H * W).to(rendered.dtype)
    normals_map = (rendered * mask[:, None]).reshape(B, H, W, 3)
    if convention != "world":
        normals_map = world_normals_to_camera(normals_map, cameras, convention)
    return RenderOutput(normals_map, (depth * mask).reshape(B, H, W), (opacity * mask).reshape(B, H, W),
                        hit.reshape(B, H, W))
