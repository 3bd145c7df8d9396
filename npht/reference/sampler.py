"""Reference (pure PyTorch) per-ray math of VolSDF's error-bound sampler (Yariv et al.
2021, Algorithm 1; the behaviour of VolSDF's/MonoSDF's ``ErrorBoundSampler``): the
distance bound d* per interval, the opacity error bound, the bisection for the smallest
beta meeting ``eps``, and inverse-CDF upsampling. Rays are rows: ``z, sdf [R, n]``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from npht.reference.render import laplace_density

__all__ = ["distance_bound", "opacity_error_bound", "bisect_beta", "sample_pdf", "initial_beta",
           "eb_bisect_beta", "upsample_pdf", "eb_upsample", "eb_merge", "PDF_BOUND", "PDF_WEIGHTS"]


def distance_bound(z: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
    """d* per interval ``[R, n-1]`` (VolSDF Theorem 1): the least distance to the surface
    any point of the interval can have, given |sdf| at its ends; 0 where the sign changes."""
    a = z[:, 1:] - z[:, :-1]
    b, c = sdf[:, :-1].abs(), sdf[:, 1:].abs()
    first = a * a + b * b <= c * c  # the nearest point is the interval's start
    second = a * a + c * c <= b * b  # ... its end
    s = (a + b + c) / 2
    area = torch.sqrt(torch.clamp(s * (s - a) * (s - b) * (s - c), min=0.0))
    height = 2.0 * area / torch.where(a > 0, a, torch.ones_like(a))  # triangle height over a
    triangle = ~first & ~second & (b + c - a > 0)
    d = torch.where(second, c, torch.where(first, b, torch.where(triangle, height, torch.zeros_like(a))))
    same_sign = (sdf[:, 1:].sign() * sdf[:, :-1].sign()) == 1
    return d * same_sign


def _error_terms(beta, sdf, dists, d_star):
    """Opacity error bound per interval ``[R, n-1]`` and the free energy before each
    interval ``[R, n]`` for beta ``[R, 1]``."""
    density = laplace_density(sdf, beta)
    shifted = torch.cat([torch.zeros_like(dists[:, :1]), dists * density[:, :-1]], -1)
    before = torch.cumsum(shifted, -1)
    per_interval = torch.exp(-d_star / beta) * dists * dists / (4.0 * beta * beta)
    bound = (torch.clamp(torch.exp(torch.cumsum(per_interval, -1)), max=1e6) - 1.0) * torch.exp(-before[:, :-1])
    return bound


def opacity_error_bound(beta: torch.Tensor, sdf: torch.Tensor, z: torch.Tensor,
                        d_star: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Max over the ray of VolSDF's opacity error bound ``[R]`` for beta ``[R]`` or a scalar."""
    d_star = distance_bound(z, sdf) if d_star is None else d_star
    beta = torch.as_tensor(beta, dtype=sdf.dtype, device=sdf.device)
    beta = beta.reshape(-1, 1) if beta.dim() else beta
    return _error_terms(beta, sdf, z[:, 1:] - z[:, :-1], d_star).max(-1).values


def initial_beta(z: torch.Tensor, eps: float) -> torch.Tensor:
    """VolSDF Lemma 2: a beta ``[R]`` for which the bound holds for any SDF."""
    dists = z[:, 1:] - z[:, :-1]
    return torch.sqrt((dists * dists).sum(-1) / (4.0 * math.log(1.0 + eps)))


def bisect_beta(beta0: torch.Tensor, beta_hi: torch.Tensor, sdf: torch.Tensor, z: torch.Tensor,
                eps: float, iters: int) -> torch.Tensor:
    """The smallest beta in ``[beta0, beta_hi]`` (per ray) whose error bound is <= eps:
    beta0 where it already holds, else ``iters`` bisection steps keeping the upper end."""
    d_star = distance_bound(z, sdf)
    beta0 = torch.as_tensor(beta0, dtype=sdf.dtype, device=sdf.device).reshape(())
    ok0 = opacity_error_bound(beta0, sdf, z, d_star) <= eps
    hi = torch.where(ok0, beta0, beta_hi)
    lo = beta0.expand_as(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = opacity_error_bound(mid, sdf, z, d_star) <= eps
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return hi


def sample_pdf(bins: torch.Tensor, pdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: piecewise-constant ``pdf [R, n-1]`` over ``bins [R, n]``
    (normalised here), quantiles ``u [R, k]`` in [0, 1] -> depths ``[R, k]``. A ray whose
    pdf sums to exactly 0 (no ``add_tiny``, and an error bound or weights that vanish or
    underflow everywhere: a zero-length ray, one far from the surface) samples as the
    ``add_tiny`` limit does: every interval the same mass (0/0 gave NaN depths)."""
    total = pdf.sum(-1, keepdim=True)
    pdf = torch.where(total == 0, 1.0 / pdf.shape[-1], pdf / total)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    # capped at 1 and ending at exactly 1: a sum that rounds to 1 +- 1 ulp would otherwise
    # send u = 1 to the last interval or past it depending on summation order, and (with the
    # 1e-5 denominator rule below) move that sample by a whole interval between backends
    cdf = torch.cat([cdf[:, :-1].clamp(max=1.0), torch.ones_like(cdf[:, -1:])], -1)
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)
    below = torch.clamp(idx - 1, min=0)
    above = torch.clamp(idx, max=cdf.shape[-1] - 1)
    c0, c1 = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    b0, b1 = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = c1 - c0
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    return b0 + (u - c0) / denom * (b1 - b0)


# ---- raw-kernel contract of the fused sampler ops (csrc/bindings.cpp) ---------------------
# Same signatures as torch.ops.npht_C.eb_* and npht.kernels.sampler; built from the
# functions above with the exact expressions of ErrorBoundSampler (so backend="reference"
# reproduces its behaviour bit for bit).

PDF_BOUND, PDF_WEIGHTS = 0, 1


def eb_bisect_beta(z: torch.Tensor, sdf: torch.Tensor, beta0: float, beta_hi: torch.Tensor,
                   eps: float, iters: int) -> torch.Tensor:
    """``z, sdf [R, n]``, ``beta_hi [R]`` -> ``beta [R]`` (:func:`bisect_beta`)."""
    return bisect_beta(beta0, beta_hi, sdf, z, eps, iters)


def upsample_pdf(z: torch.Tensor, sdf: torch.Tensor, beta: torch.Tensor, mode: int,
                 add_tiny: float) -> torch.Tensor:
    """The pdf ``[R, n-1]`` eb_upsample samples from: mode 0 the opacity error bound per
    interval at ``beta [R]``, mode 1 the rendering weights of the first n-1 samples; plus
    ``add_tiny``."""
    if mode not in (PDF_BOUND, PDF_WEIGHTS):
        raise ValueError(f"mode must be 0 (error bound) or 1 (weights), got {mode!r}")
    dists = z[:, 1:] - z[:, :-1]
    density = laplace_density(sdf, beta[:, None])
    free = torch.cat([dists, torch.full_like(dists[:, :1], 1e10)], -1) * density
    before = torch.cumsum(torch.cat([torch.zeros_like(free[:, :1]), free[:, :-1]], -1), -1)
    transmittance = torch.exp(-before)
    if mode == PDF_BOUND:
        d_star = distance_bound(z, sdf)
        per = torch.exp(-d_star / beta[:, None]) * dists * dists / (4.0 * beta[:, None] ** 2)
        bound = (torch.clamp(torch.exp(torch.cumsum(per, -1)), max=1e6) - 1.0) * transmittance[:, :-1]
        return bound + add_tiny
    weights = (1.0 - torch.exp(-free)) * transmittance
    return weights[:, :-1] + add_tiny


def eb_upsample(z: torch.Tensor, sdf: torch.Tensor, beta: torch.Tensor, u: torch.Tensor, mode: int,
                add_tiny: float) -> torch.Tensor:
    """``z, sdf [R, n]``, ``beta [R]``, quantiles ``u [R, k]`` -> samples ``[R, k]``:
    :func:`sample_pdf` of :func:`upsample_pdf`."""
    return sample_pdf(z, upsample_pdf(z, sdf, beta, mode, add_tiny), u)


def eb_merge(z: torch.Tensor, samples: torch.Tensor):
    """Row-wise sorted ``z [R, n]`` and ``samples [R, k]`` -> ``(merged [R, n+k], order
    [R, n+k] int64)``: torch.sort of their concatenation (equal values in either order)."""
    merged, order = torch.sort(torch.cat([z, samples], -1), -1)
    return merged, order
