"""Reference (pure PyTorch) volume-rendering compositing, MonoSDF/VolSDF semantics: the
tests' oracle for npht's fused compositing and the thesis-style baseline.

For a ray with samples at depths ``z_0 < ... < z_{S-1}``: ``delta_i = z_{i+1} - z_i``
(``last_delta`` for the last sample, 1e10 in VolSDF, so the last sample absorbs what is
left), ``sigma_i = LaplaceDensity(sdf_i; beta)``, ``alpha_i = 1 - exp(-sigma_i delta_i)``,
``T_i = exp(-sum_{j<i} sigma_j delta_j)``, ``w_i = alpha_i T_i``; the outputs are
``sum_i w_i v_i`` for per-sample values ``v`` (normals, colour, any K channels), depth
``sum_i w_i z_i`` and opacity ``sum_i w_i``.
"""

from __future__ import annotations

from typing import Optional

import torch

from npht.render.density import laplace_density

LAST_DELTA = 1e10


def composite_weights(sdf: torch.Tensor, z: torch.Tensor, beta, last_delta: float = LAST_DELTA) -> torch.Tensor:
    """Dense ``[R, S]`` sdf and depths -> weights ``[R, S]``."""
    delta = torch.cat([z[:, 1:] - z[:, :-1], torch.full_like(z[:, :1], last_delta)], -1)
    free = laplace_density(sdf, beta) * delta
    alpha = 1.0 - torch.exp(-free)
    shifted = torch.cat([torch.zeros_like(free[:, :1]), free[:, :-1]], -1)
    return alpha * torch.exp(-torch.cumsum(shifted, -1))


def composite(sdf: torch.Tensor, z: torch.Tensor, beta, values: Optional[torch.Tensor] = None,
              last_delta: float = LAST_DELTA):
    """Dense compositing: ``sdf, z [R, S]``, ``values [R, S, K]`` (optional) ->
    ``(rendered [R, K] or None, depth [R], opacity [R], weights [R, S])``."""
    w = composite_weights(sdf, z, beta, last_delta)
    rendered = None if values is None else (w[..., None] * values).sum(1)
    return rendered, (w * z).sum(1), w.sum(1), w


def composite_packed(sdf: torch.Tensor, z: torch.Tensor, beta, ray_offsets: torch.Tensor,
                     values: Optional[torch.Tensor] = None, last_delta: float = LAST_DELTA):
    """Packed compositing: samples of ray r are ``[ray_offsets[r], ray_offsets[r+1])`` of
    the flat ``sdf, z [P]``, ``values [P, K]``. Returns ``(rendered [R, K] or None, depth
    [R], opacity [R], weights [P])``. Pads to a dense layout (zero-weight padding)."""
    R = ray_offsets.numel() - 1
    counts = ray_offsets[1:] - ray_offsets[:-1]
    S = int(counts.max()) if R > 0 else 0
    if S == 0:
        K = 0 if values is None else values.shape[-1]
        zeros = sdf.new_zeros(R)
        return (None if values is None else sdf.new_zeros(R, K)), zeros, zeros.clone(), sdf.new_zeros(sdf.shape)
    ray = torch.repeat_interleave(torch.arange(R, device=sdf.device), counts)
    col = torch.arange(sdf.numel(), device=sdf.device) - ray_offsets[:-1].repeat_interleave(counts)
    valid = torch.zeros(R, S, dtype=torch.bool, device=sdf.device)
    valid[ray, col] = True
    # padding: far-away, empty samples (sdf +inf -> density 0) after the ray's last one
    sdf_d = sdf.new_full((R, S), float("inf")).index_put((ray, col), sdf)
    # padding sits last_delta apart behind the ray's last sample, which so keeps its
    # own delta of last_delta
    last = (ray_offsets[1:] - 1).clamp(min=0)
    steps = torch.arange(1, S + 1, device=z.device, dtype=z.dtype)
    z_d = (z[last][:, None] + last_delta * steps).index_put((ray, col), z)
    w_d = composite_weights(sdf_d, z_d, beta, last_delta) * valid
    w = w_d[ray, col]
    rendered = None
    if values is not None:
        rendered = values.new_zeros(R, values.shape[-1]).index_add(0, ray, w[:, None] * values)
    depth = z.new_zeros(R).index_add(0, ray, w * z)
    opacity = z.new_zeros(R).index_add(0, ray, w)
    return rendered, depth, opacity, w
