"""Triton backend of the error-bound sampler's per-ray math (the contract of
csrc/bindings.cpp): ``eb_bisect_beta``, ``eb_upsample``, ``eb_merge``.

Same signatures as ``npht.reference.sampler.eb_*`` and the same math, in the same
operation order, as ``csrc/include/npht/sampler_math.h``: everything is computed in float64
and rounded to the input dtype at the end, except the bisection's interval ends (lo, hi,
mid) and eps, which stay in the input dtype like the reference's.

Each program handles BLOCK_R rays as [BLOCK_R] vectors and loops over the samples of its
rays (the bisection: ``iters + 1`` passes over the n - 1 intervals; the inverse CDF: a
binary search per quantile in a float64 CDF scratch buffer; the merge: n + k steps of a
two-pointer merge). Scalars that must keep float64 precision (beta0, eps, add_tiny) are
passed in a small float64 tensor, since Triton passes Python floats as float32.

Only long-stable Triton APIs are used (load/store with masks, where, exp, sqrt, maximum,
minimum, arange, program_id, constexpr, debug_barrier); no autotuning.
"""

import torch
import triton
import triton.language as tl

__all__ = ["eb_bisect_beta", "eb_upsample", "eb_merge"]

_BLOCK_R = 128  # rays per program (one per thread with 4 warps)


# ---------------------------------------------------------------------------------------
# per-interval helpers (float64)
# ---------------------------------------------------------------------------------------


@triton.jit
def _laplace(sdf, inv):
    outside = sdf >= 0.0
    half_e = 0.5 * tl.exp(-tl.where(outside, sdf, -sdf) * inv)
    return inv * tl.where(outside, half_e, 1.0 - half_e)


@triton.jit
def _bound_term(a, s0, s1, beta):
    """exp(-d* / beta) a^2 / (4 beta^2) of one interval (d*: reference distance_bound)."""
    b = tl.abs(s0)
    c = tl.abs(s1)
    first = a * a + b * b <= c * c
    second = a * a + c * c <= b * b
    s = (a + b + c) / 2.0
    q = s * (s - a) * (s - b) * (s - c)
    q = tl.where(q < 0.0, 0.0, q)
    height = 2.0 * tl.sqrt(q) / tl.where(a > 0.0, a, 1.0)
    triangle = ~first & ~second & (b + c - a > 0.0)
    d = tl.where(second, c, tl.where(first, b, tl.where(triangle, height, 0.0)))
    same = ((s0 > 0.0) & (s1 > 0.0)) | ((s0 < 0.0) & (s1 < 0.0))
    d = d * tl.where(same, 1.0, 0.0)
    return tl.exp(-d / beta) * a * a / (4.0 * beta * beta)


@triton.jit
def _bound_value(cum, before):
    e = tl.exp(cum)
    e = tl.where(e > 1e6, 1e6, e)
    return (e - 1.0) * tl.exp(-before)


@triton.jit
def _bound_holds(z, sdf, base, m, n, beta, eps):
    """max_i E_i(beta) <= eps per ray (False where any E_i is NaN); beta float64 [BLOCK_R]."""
    inv = 1.0 / beta
    cum = tl.zeros_like(beta)
    before = tl.zeros_like(beta)
    ok = m
    z0 = tl.load(z + base, mask=m, other=0.0).to(tl.float64)
    s0 = tl.load(sdf + base, mask=m, other=1.0).to(tl.float64)
    for i in range(1, n):
        z1 = tl.load(z + base + i, mask=m, other=0.0).to(tl.float64)
        s1 = tl.load(sdf + base + i, mask=m, other=1.0).to(tl.float64)
        a = z1 - z0
        cum += _bound_term(a, s0, s1, beta)
        ok = ok & (_bound_value(cum, before) <= eps)
        before += a * _laplace(s0, inv)
        z0 = z1
        s0 = s1
    return ok


# ---------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------


@triton.jit
def _bisect_kernel(z, sdf, beta_hi, out, scalars, R, n, iters, BLOCK_R: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = r < R
    base = r * n
    SDT = out.dtype.element_ty
    zero = tl.zeros([BLOCK_R], dtype=tl.int64)
    b0 = tl.load(scalars + zero).to(SDT)  # beta0 in the input dtype
    eps = tl.load(scalars + zero + 1).to(SDT).to(tl.float64)  # eps rounded like the reference
    ok0 = _bound_holds(z, sdf, base, m, n, b0.to(tl.float64), eps)
    hi = tl.where(ok0, b0, tl.load(beta_hi + r, mask=m, other=1.0))
    lo = b0
    for _ in range(0, iters):
        mid = (lo + hi) * 0.5  # exact halving, in the input dtype
        ok = _bound_holds(z, sdf, base, m & ~ok0, n, mid.to(tl.float64), eps)
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid)
    tl.store(out + r, hi, mask=m)


@triton.jit
def _upsample_kernel(z, sdf, beta, u, out, cdf, scalars, R, n, k, steps, MODE: tl.constexpr,
                     BLOCK_R: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = r < R
    base = r * n
    zero = tl.zeros([BLOCK_R], dtype=tl.int64)
    tiny = tl.load(scalars + zero)
    b = tl.load(beta + r, mask=m, other=1.0).to(tl.float64)
    inv = 1.0 / b
    # pass 1: the pdf (kept in cdf[1..n)) and its sum
    cum = tl.zeros([BLOCK_R], dtype=tl.float64)
    before = tl.zeros([BLOCK_R], dtype=tl.float64)
    total = tl.zeros([BLOCK_R], dtype=tl.float64)
    z0 = tl.load(z + base, mask=m, other=0.0).to(tl.float64)
    s0 = tl.load(sdf + base, mask=m, other=1.0).to(tl.float64)
    for i in range(1, n):
        z1 = tl.load(z + base + i, mask=m, other=0.0).to(tl.float64)
        s1 = tl.load(sdf + base + i, mask=m, other=1.0).to(tl.float64)
        a = z1 - z0
        free = a * _laplace(s0, inv)
        if MODE == 0:
            cum += _bound_term(a, s0, s1, b)
            p = _bound_value(cum, before)
        else:
            p = (1.0 - tl.exp(-free)) * tl.exp(-before)
        before += free
        p = p + tiny
        tl.store(cdf + base + i, p, mask=m)
        total += p
        z0 = z1
        s0 = s1
    tl.debug_barrier()
    # pass 2: the CDF of the normalised pdf, in place
    run = tl.zeros([BLOCK_R], dtype=tl.float64)
    tl.store(cdf + base, run, mask=m)
    # a pdf summing to exactly 0: every interval the same mass (the reference's rule)
    flat = total == 0.0
    flat_p = 1.0 / tl.full([BLOCK_R], n - 1, tl.float64)  # n >= 2 (the op checks it)
    for i in range(1, n):
        run += tl.where(flat, flat_p, tl.load(cdf + base + i, mask=m, other=0.0) / total)
        # capped at 1 (NaN kept, as torch.clamp), the last entry exactly 1 (as the reference:
        # u = 1 lands on the same interval whatever the summation order)
        tl.store(cdf + base + i, tl.where(i == n - 1, 1.0, tl.where(run > 1.0, 1.0, run)), mask=m)
    tl.debug_barrier()
    # inverse CDF: per quantile, lo = the number of CDF entries <= u (binary search)
    SDT = out.dtype.element_ty
    for j in range(0, k):
        uj = tl.load(u + r * k + j, mask=m, other=0.0).to(tl.float64)
        lo = tl.zeros([BLOCK_R], dtype=tl.int64)
        hi = tl.zeros([BLOCK_R], dtype=tl.int64) + n
        for _ in range(0, steps):
            active = lo < hi
            mid = (lo + hi) >> 1
            c = tl.load(cdf + base + mid, mask=m & active, other=0.0)
            right = active & (c <= uj)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(active & ~right, mid, hi)
        below = tl.where(lo - 1 < 0, 0, lo - 1)
        above = tl.where(lo > n - 1, n - 1, lo)
        c0 = tl.load(cdf + base + below, mask=m, other=0.0)
        c1 = tl.load(cdf + base + above, mask=m, other=0.0)
        za = tl.load(z + base + below, mask=m, other=0.0).to(tl.float64)
        zb = tl.load(z + base + above, mask=m, other=0.0).to(tl.float64)
        denom = c1 - c0
        denom = tl.where(denom < 1e-5, 1.0, denom)
        tl.store(out + r * k + j, (za + (uj - c0) / denom * (zb - za)).to(SDT), mask=m)


@triton.jit
def _merge_kernel(z, samples, merged, order, R, n, k, BLOCK_R: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = r < R
    i = tl.zeros([BLOCK_R], dtype=tl.int64)
    j = tl.zeros([BLOCK_R], dtype=tl.int64)
    for t in range(0, n + k):
        has_a = i < n
        has_b = j < k
        a = tl.load(z + r * n + i, mask=m & has_a, other=0.0)
        b = tl.load(samples + r * k + j, mask=m & has_b, other=0.0)
        take_a = ~has_b | (has_a & ~(b < a))
        tl.store(merged + r * (n + k) + t, tl.where(take_a, a, b), mask=m)
        tl.store(order + r * (n + k) + t, tl.where(take_a, i, n + j), mask=m)
        i = tl.where(take_a, i + 1, i)
        j = tl.where(take_a, j, j + 1)


# ---------------------------------------------------------------------------------------
# launchers (inputs already validated by npht.ops.sampler; shapes are re-checked cheaply)
# ---------------------------------------------------------------------------------------


def _rays(z, sdf):
    if z.dim() != 2 or sdf.shape != z.shape or z.shape[1] < 2:
        raise ValueError(f"z and sdf must both be [R, n] with n >= 2, got {tuple(z.shape)} and "
                         f"{tuple(sdf.shape)}")
    return z.contiguous(), sdf.contiguous(), z.shape[0], z.shape[1]


def _scalars(device, *values):
    return torch.tensor(values, dtype=torch.float64, device=device)


def eb_bisect_beta(z, sdf, beta0, beta_hi, eps, iters):
    """z, sdf [R, n], beta_hi [R] -> beta [R] (reference bisect_beta)."""
    z, sdf, R, n = _rays(z, sdf)
    out = torch.empty(R, dtype=z.dtype, device=z.device)
    if R == 0:
        return out
    grid = (triton.cdiv(R, _BLOCK_R),)
    _bisect_kernel[grid](z, sdf, beta_hi.contiguous(), out, _scalars(z.device, beta0, eps), R, n,
                         int(iters), BLOCK_R=_BLOCK_R, num_warps=4)
    return out


def eb_upsample(z, sdf, beta, u, mode, add_tiny):
    """z, sdf [R, n], beta [R], quantiles u [R, k] -> samples [R, k] (inverse CDF of the
    error bound (mode 0) or the rendering weights (mode 1) per interval, plus add_tiny)."""
    z, sdf, R, n = _rays(z, sdf)
    if int(mode) not in (0, 1):
        raise ValueError(f"mode must be 0 (error bound) or 1 (weights), got {mode!r}")
    u = u.contiguous()
    k = u.shape[1]
    out = torch.empty((R, k), dtype=z.dtype, device=z.device)
    if R == 0 or k == 0:
        return out
    cdf = torch.empty((R, n), dtype=torch.float64, device=z.device)  # scratch
    grid = (triton.cdiv(R, _BLOCK_R),)
    _upsample_kernel[grid](z, sdf, beta.contiguous(), u, out, cdf, _scalars(z.device, add_tiny), R,
                           n, k, int(n).bit_length() + 1, MODE=int(mode), BLOCK_R=_BLOCK_R,
                           num_warps=4)
    return out


def eb_merge(z, samples):
    """Row-wise sorted z [R, n], samples [R, k] -> (merged [R, n + k], order [R, n + k])."""
    z = z.contiguous()
    samples = samples.contiguous()
    R, n = z.shape
    k = samples.shape[1]
    merged = torch.empty((R, n + k), dtype=z.dtype, device=z.device)
    order = torch.empty((R, n + k), dtype=torch.int64, device=z.device)
    if R == 0 or n + k == 0:
        return merged, order
    grid = (triton.cdiv(R, _BLOCK_R),)
    _merge_kernel[grid](z, samples, merged, order, R, n, k, BLOCK_R=_BLOCK_R, num_warps=4)
    return merged, order
