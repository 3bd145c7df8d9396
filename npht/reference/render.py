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

LAST_DELTA = 1e10


def laplace_density(sdf: torch.Tensor, beta) -> torch.Tensor:
    """``(1/beta) * Psi_beta(-sdf)``: ``0.5 exp(-sdf/beta) / beta`` outside (sdf >= 0),
    ``(1 - 0.5 exp(sdf/beta)) / beta`` inside; ``beta`` a scalar or broadcastable tensor."""
    inv = 1.0 / beta
    # |sdf| as a where (not .abs()) so the derivative at sdf == 0 is the true -0.5/beta^2
    # (abs' subgradient there is 0); both branches meet at 0.5/beta.
    outside = sdf >= 0
    a = torch.where(outside, sdf, -sdf)
    # an infinite |sdf| (empty space): exp = 0 with zero gradients, computed from a finite
    # stand-in (through inf, beta's gradient would be inf * 0 = nan)
    inf = torch.isinf(a)
    half_e = torch.where(inf, 0.0, 0.5 * torch.exp(-torch.where(inf, 0.0, a) * inv))
    return inv * torch.where(outside, half_e, 1.0 - half_e)


def composite_weights(sdf: torch.Tensor, z: torch.Tensor, beta, last_delta: float = LAST_DELTA,
                      valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense ``[R, S]`` sdf and depths -> weights ``[R, S]``. ``valid [R, S]`` (bool) marks
    real samples of rows that end in padding: padding is empty space (and gets no gradient)."""
    delta = torch.cat([z[:, 1:] - z[:, :-1], torch.full_like(z[:, :1], last_delta)], -1)
    free = laplace_density(sdf, beta) * delta
    if valid is not None:
        free = torch.where(valid, free, torch.zeros_like(free))
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
    # padding: empty samples (masked out of the free energy) after the ray's last one
    sdf_d = sdf.new_zeros((R, S)).index_put((ray, col), sdf)
    # padding sits last_delta apart behind the ray's last sample, which so keeps its
    # own delta of last_delta: ray r's column counts[r] + j lies (j + 1) last_delta behind
    last = (ray_offsets[1:] - 1).clamp(min=0)
    steps = torch.arange(1, S + 1, device=z.device, dtype=z.dtype)[None] - counts[:, None].to(z.dtype)
    z_d = (z[last][:, None] + last_delta * steps).index_put((ray, col), z)
    w_d = composite_weights(sdf_d, z_d, beta, last_delta, valid) * valid
    w = w_d[ray, col]
    rendered = None
    if values is not None:
        rendered = values.new_zeros(R, values.shape[-1]).index_add(0, ray, w[:, None] * values)
    depth = z.new_zeros(R).index_add(0, ray, w * z)
    opacity = z.new_zeros(R).index_add(0, ray, w)
    return rendered, depth, opacity, w


# ---------------------------------------------------------------------------------------
# The raw-kernel contract of the fused compositing op (csrc/bindings.cpp), in PyTorch.
#
#   composite_fwd(sdf, z, beta, values?, offsets?, last_delta)
#       -> (rendered [R, K], depth [R], opacity [R], weights like sdf)
#   dense:  sdf, z [R, S]; values [R, S, K] or None (K = 0); offsets None
#   packed: sdf, z [M]; values [M, K] or None; offsets [R + 1] int64 (CSR: ray r owns
#           samples offsets[r] .. offsets[r+1]-1, offsets[0] = 0, offsets[R] = M)
#   beta [1] (shared) or [R] (per ray); every float tensor has the dtype of sdf (f32/f64).
#
#   composite_bwd(grad_rendered?, grad_depth?, grad_opacity?, grad_weights?, sdf, z, beta,
#                 values?, offsets?, last_delta, need_sdf, need_z, need_beta, need_values,
#                 weights?=None)
#       -> (grad_sdf like sdf, grad_z like z, grad_beta [R] (per ray, also for a shared
#           beta: the caller sums), grad_values like values); not-needed outputs are empty.


def _num_rays(sdf, offsets):
    return sdf.shape[0] if offsets is None else offsets.numel() - 1


def _ref_composite(sdf, z, beta, values, offsets, last_delta):
    R = _num_rays(sdf, offsets)
    b = beta.reshape(()) if beta.numel() == 1 and R != 1 else beta.reshape(-1)
    if offsets is None:
        b = b if b.dim() == 0 else b[:, None]
        rendered, depth, opacity, w = composite(sdf, z, b, values, last_delta)
    else:
        if b.dim() == 1:  # per-ray beta on the packed layout: expand to samples
            counts = offsets[1:] - offsets[:-1]
            b = torch.repeat_interleave(b, counts)
            return _ref_packed_per_sample_beta(sdf, z, b, values, offsets, last_delta)
        rendered, depth, opacity, w = composite_packed(sdf, z, b, offsets, values, last_delta)
    if rendered is None:
        rendered = sdf.new_zeros(R, 0)
    return rendered, depth, opacity, w


def _ref_packed_per_sample_beta(sdf, z, beta_s, values, offsets, last_delta):
    """Packed compositing with a beta per sample (the ray's), by a per-ray loop of the
    dense formula (the oracle: slow, obviously right)."""
    R = offsets.numel() - 1
    K = 0 if values is None else values.shape[-1]
    rendered, depth, opacity, weights = [], [], [], []
    for r in range(R):
        a, e = int(offsets[r]), int(offsets[r + 1])
        if e == a:
            rendered.append(sdf.new_zeros(1, K))
            depth.append(sdf.new_zeros(1))
            opacity.append(sdf.new_zeros(1))
            continue
        v = None if values is None else values[a:e][None]
        rr, d, o, w = composite(sdf[a:e][None], z[a:e][None], beta_s[a:e][None], v, last_delta)
        rendered.append(sdf.new_zeros(1, K) if rr is None else rr)
        depth.append(d)
        opacity.append(o)
        weights.append(w[0])
    w = torch.cat(weights) if weights else sdf.new_zeros(0)
    if R == 0:
        return sdf.new_zeros(0, K), sdf.new_zeros(0), sdf.new_zeros(0), w
    return torch.cat(rendered), torch.cat(depth), torch.cat(opacity), w


def composite_fwd(sdf, z, beta, values, offsets, last_delta):
    with torch.no_grad():
        return _ref_composite(sdf, z, beta, values, offsets, last_delta)


def _laplace_vjp(sdf, beta):
    """sigma, dsigma/dsdf, dsigma/dbeta of the Laplace density (exact at sdf = 0)."""
    x = torch.where(sdf >= 0, sdf, -sdf) / beta
    e = torch.exp(-x)
    inv2 = 1.0 / (beta * beta)
    outside = sdf >= 0
    sigma = torch.where(outside, 0.5 * e, 1.0 - 0.5 * e) / beta
    hx = torch.where(e == 0, 0.0, 0.5 * e * (x - 1.0))  # the limit 0 at an infinite |sdf|
    d_beta = torch.where(outside, hx, -hx - 1.0) * inv2
    return sigma, -0.5 * e * inv2, d_beta


def _dense_bwd(g_r, g_d, g_o, g_w, sdf, z, beta, values, valid, last_delta):
    """Explicit vjp of dense compositing (rows may end in padding where ``valid`` is False):
    dL/dtau_i = g_i T_{i+1} - sum_{j>i} w_j g_j with g_i = dL/dw_i."""
    R, S = sdf.shape
    nxt = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], -1)
    delta = torch.where(nxt, torch.cat([z[:, 1:] - z[:, :-1], torch.zeros_like(z[:, :1])], -1),
                        torch.full_like(z, last_delta))
    sigma, d_sdf, d_beta = _laplace_vjp(sdf, beta)
    sigma = torch.where(valid, sigma, torch.zeros_like(sigma))
    tau = sigma * delta
    excl = torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], -1), -1)
    incl = excl + tau  # (not cumsum(tau) - tau: the last tau ~ 1e10 sigma would cancel)
    w = -torch.expm1(-tau) * torch.exp(-excl)
    g = torch.zeros_like(sdf)
    if g_r is not None and values is not None:
        g = g + (g_r[:, None, :] * values).sum(-1)
    if g_d is not None:
        g = g + g_d[:, None] * z
    if g_o is not None:
        g = g + g_o[:, None]
    if g_w is not None:
        g = g + g_w
    g = torch.where(valid, g, torch.zeros_like(g))
    wg = w * g
    suffix = torch.flip(torch.cumsum(torch.flip(wg, [-1]), -1), [-1]) - wg
    d_tau = torch.where(valid, g * torch.exp(-incl) - suffix, torch.zeros_like(g))
    g_sdf = d_tau * delta * d_sdf
    g_beta = (d_tau * delta * d_beta).sum(-1)
    cur = torch.where(nxt, d_tau * sigma, torch.zeros_like(d_tau))
    g_z = torch.cat([torch.zeros_like(cur[:, :1]), cur[:, :-1]], -1) - cur
    if g_d is not None:
        g_z = g_z + g_d[:, None] * w
    g_z = torch.where(valid, g_z, torch.zeros_like(g_z))
    g_v = None
    if values is not None:
        g_v = w[..., None] * (g_r[:, None, :] if g_r is not None else torch.zeros_like(values[:, :1]))
        g_v = g_v.expand_as(values)
    return g_sdf, g_z, g_beta, g_v


def composite_bwd(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf, z, beta, values,
                  offsets, last_delta, need_sdf, need_z, need_beta, need_values, weights=None):
    # `weights` (the forward's) is an optional hint of the contract: recomputed here
    R = _num_rays(sdf, offsets)
    ups = [None if t is None or t.numel() == 0 else t for t in
           (grad_rendered, grad_depth, grad_opacity, grad_weights)]
    b = beta.reshape(-1).expand(R)[:, None]
    if offsets is None:
        valid = torch.ones(sdf.shape, dtype=torch.bool, device=sdf.device)
        g_sdf, g_z, g_beta, g_v = _dense_bwd(*ups, sdf, z, b, values, valid, last_delta)
    else:
        counts = offsets[1:] - offsets[:-1]
        S = int(counts.max()) if R > 0 else 0
        ray = torch.repeat_interleave(torch.arange(R, device=sdf.device), counts)
        col = torch.arange(sdf.numel(), device=sdf.device) - offsets[:-1].repeat_interleave(counts)
        valid = torch.zeros(R, S, dtype=torch.bool, device=sdf.device)
        valid[ray, col] = True

        def dense(t):
            return None if t is None else t.new_zeros((R, S) + t.shape[1:]).index_put((ray, col), t)

        gw = dense(ups[3])
        g_sdf, g_z, g_beta, g_v = _dense_bwd(*ups[:3], gw, dense(sdf), dense(z), b, dense(values), valid,
                                              last_delta)
        g_sdf, g_z = g_sdf[ray, col], g_z[ray, col]
        g_v = None if g_v is None else g_v[ray, col]
    def empty():  # a fresh one each: outputs of a custom op may not alias each other
        return sdf.new_empty(0)

    return (g_sdf if need_sdf else empty(), g_z if need_z else empty(), g_beta if need_beta else empty(),
            g_v.contiguous() if need_values and g_v is not None else empty())


def baseline_composite(sdf: torch.Tensor, z: torch.Tensor, beta, values: torch.Tensor,
                       last_delta: float = LAST_DELTA):
    """Dense compositing as VolSDF's code writes it, the baseline npht's compositing op is
    measured against: Laplace density ``(0.5 + 0.5 sign(sdf) expm1(-|sdf| / beta)) / beta``,
    free energy, alpha, exclusive cumulative transmittance, weights; no guards (:func:`composite`
    handles infinite SDFs and padding). ``sdf, z [R, S]``, ``values [R, S, K]`` ->
    ``(rendered [R, K], depth [R], opacity [R], weights [R, S])``, :func:`composite`'s
    numbers for finite inputs."""
    sigma = (0.5 + 0.5 * sdf.sign() * torch.expm1(-sdf.abs() / beta)) / beta
    delta = torch.cat([z[:, 1:] - z[:, :-1], torch.full_like(z[:, :1], last_delta)], -1)
    free = sigma * delta
    alpha = 1.0 - torch.exp(-free)
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(free[:, :1]), free[:, :-1]], -1), -1))
    w = alpha * trans
    return (w[..., None] * values).sum(1), (w * z).sum(1), w.sum(1), w
