"""Triton backend of npht's fused VolSDF compositing (the contract of csrc/bindings.cpp).

Same signatures and meaning as ``npht.reference.render.composite_fwd/bwd``: dense ``[R, S]``
or packed (CSR ``offsets [R+1]``, rays may be empty) samples, a shared ``[1]`` or per-ray
``[R]`` beta, optional per-sample values ``[.., K]``; ``composite_bwd`` gives the beta
gradient per ray (the caller sums it for a shared beta) and an empty tensor for every
output that is not needed.

Math, per ray with samples ``i = 0 .. n-1``: ``delta_i = z_{i+1} - z_i`` and ``last_delta``
for the last sample, ``sigma_i`` the Laplace density of ``sdf_i`` (written as the reference
does: ``inv = 1 / beta``, ``e = exp(-|sdf| inv)``), ``tau_i = sigma_i delta_i``,
``T_i = exp(-sum_{j<i} tau_j)``, ``alpha_i = -expm1(-tau_i)`` (Kahan's expm1, accurate for
tiny tau), ``w_i = alpha_i T_i``. Backward with ``g_i = dL/dw_i``:
``dL/dtau_i = g_i T_{i+1} - sum_{j>i} w_j g_j``, then the chain rule through
``sigma(sdf, beta)`` and ``delta(z)``.

Numerics: everything is computed in float64 (loads are converted, stores converted back to
the tensor dtype), so float32 results are the float64 ones rounded once. The exclusive
prefix ``sum_{j<i} tau_j`` is a cumulative sum of the previous samples' tau (recomputed
from the samples at ``i-1``), never an inclusive sum minus ``tau_i``: the last sample's
``tau`` (``sigma last_delta``, up to ~1e12) would swamp it. The suffix sums
``sum_{j>i} w_j g_j`` are ``total - inclusive prefix`` (a first pass over the ray gives the
total), and exactly 0 for the last sample, whose ``delta`` (``last_delta``) would amplify
any round-off.

Design: one program owns BLOCK_R rays (so it stores per-ray results without atomics) and
loops over their samples in chunks of BLOCK_S columns, up to the block's longest ray,
carrying per-ray running sums across chunks and scanning with ``tl.cumsum`` inside a
chunk. The dense layout is the packed one with ``start = r S`` and ``n = S``. Per-sample
values are ``[BLOCK_R, BLOCK_S, BLOCK_K]`` tiles; the forward loops over channel blocks
outside the sample loop (the weights are recomputed per channel block, one block in the
usual K <= BLOCK_K case), the backward inside it. ``grad_z_i`` needs ``dL/dtau_{i-1}``,
which is computed from the samples at ``i-1`` (their sigma is at hand for the prefix;
their ``g`` is reloaded), so no scratch buffer or second kernel is needed.

Only long-stable Triton APIs are used (load/store with masks, where, sum, max, cumsum,
exp, log, arange, program_id, constexpr, loops with carried values); no autotuning.
"""

import torch
import triton
import triton.language as tl

from ._env import interpreter_blocks as _interpreter_blocks

__all__ = ["composite_fwd", "composite_bwd"]

# (BLOCK_R, BLOCK_S, BLOCK_K) to use instead of the heuristic (tests set it to exercise
# several chunks and channel blocks with small inputs); None: heuristic.
_BLOCKS = None


# ---------------------------------------------------------------------------------------
# helpers (few and large: the interpreter pays per helper call)
# ---------------------------------------------------------------------------------------


@triton.jit
def _ray_block(offsets, beta, R, S, PACKED: tl.constexpr, BETA_PER_RAY: tl.constexpr,
               BLOCK_R: tl.constexpr):
    """This program's rays r [BLOCK_R] (int64), their mask, first sample, sample count (0
    for masked rays) and 1 / beta (float64). Packed (``S``: the total sample count M then):
    each ray's range clamped to [0, M] as in composite_ray_range (composite_math.h), so that
    malformed offsets (unchecked under torch.compile) read nothing out of bounds."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mr = r < R
    if PACKED:
        a = tl.load(offsets + r, mask=mr, other=0).to(tl.int64)
        b = tl.load(offsets + r + 1, mask=mr, other=0).to(tl.int64)
        start = tl.minimum(tl.maximum(a, 0), S)
        n = tl.minimum(tl.maximum(b, start), S) - start
    else:
        start = r * S
        n = tl.where(mr, S, 0).to(tl.int64)
    if BETA_PER_RAY:
        b = tl.load(beta + r, mask=mr, other=1.0).to(tl.float64)
    else:
        b = tl.load(beta + r * 0, mask=mr, other=1.0).to(tl.float64)
    return r, mr, start, n, 1.0 / b


@triton.jit
def _chunk(sdf, z, start, n, inv, c0, last_delta, BLOCK_S: tl.constexpr):
    """Columns c0 .. c0+BLOCK_S-1 of the block's rays: sample mask m and index idx
    [BLOCK_R, BLOCK_S], the sdf x, depth zz, delta, e = exp(-|x|/beta), sigma and tau of the
    samples (tau 0 where masked), and of the previous samples (column >= 1): mask mp,
    depth zp, sigma sigp and tau taup (0 where mp is false)."""
    cl = (c0 + tl.arange(0, BLOCK_S)).to(tl.int64)[None, :]
    nn = n[:, None]
    m = cl < nn
    idx = start[:, None] + cl
    ib = inv[:, None]
    x = tl.load(sdf + idx, mask=m, other=0.0).to(tl.float64)
    zz = tl.load(z + idx, mask=m, other=0.0).to(tl.float64)
    mnext = (cl + 1) < nn
    zn = tl.load(z + idx + 1, mask=mnext, other=0.0).to(tl.float64)
    delta = tl.where(mnext, zn - zz, last_delta)
    mp = m & (cl >= 1)
    xp = tl.load(sdf + idx - 1, mask=mp, other=0.0).to(tl.float64)
    zp = tl.load(z + idx - 1, mask=mp, other=0.0).to(tl.float64)
    # Laplace density as in the reference: inv * (0.5 e) outside, inv * (1 - 0.5 e) inside
    out = x >= 0.0
    e = tl.exp(-tl.where(out, x, -x) * ib)
    sigma = ib * tl.where(out, 0.5 * e, 1.0 - 0.5 * e)
    outp = xp >= 0.0
    ep = tl.exp(-tl.where(outp, xp, -xp) * ib)
    sigp = ib * tl.where(outp, 0.5 * ep, 1.0 - 0.5 * ep)
    tau = tl.where(m, sigma * delta, 0.0)
    taup = tl.where(mp, sigp * (zz - zp), 0.0)
    return cl, m, idx, x, zz, delta, e, sigma, tau, mp, zp, sigp, taup


@triton.jit
def _weights(tau, taup, m, carry):
    """Exclusive prefix of tau (carry + scan of the previous samples' tau) and the weights
    alpha T (0 where masked); returns (weights, exclusive prefix, new carry)."""
    excl = carry[:, None] + tl.cumsum(taup, axis=1)
    # alpha = -expm1(-tau) by Kahan's trick: (1 - u) tau / -log(u) with u = exp(-tau)
    # (exact u == 1 means tau below round-off: alpha = tau; u == 0: alpha = 1)
    u = tl.exp(-tau)
    lg = tl.log(tl.where((u == 1.0) | (u == 0.0), 0.5, u))  # no log(0), no 0 / 0
    alpha = tl.where(u == 1.0, tau, tl.where(u == 0.0, 1.0, (1.0 - u) * (tau / -lg)))
    w = tl.where(m, alpha * tl.exp(-excl), 0.0)
    return w, excl, carry + tl.sum(taup, axis=1)


@triton.jit
def _dl_dw(grad_rendered, grad_weights, values, r, mr, idx, m, zz, gd, go, K,
           HAS_GR: tl.constexpr, HAS_GW: tl.constexpr, BLOCK_K: tl.constexpr):
    """g = dL/dw [BLOCK_R, BLOCK_S] of the samples idx (mask m, depths zz): the values
    dotted with grad_rendered, plus grad_depth z + grad_opacity + grad_weights; 0 where
    masked."""
    g = gd[:, None] * zz + go[:, None]
    if HAS_GW:
        g += tl.load(grad_weights + idx, mask=m, other=0.0).to(tl.float64)
    if HAS_GR:
        m3 = m[:, :, None]
        vrow = idx[:, :, None] * K
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            mk = kk < K
            gr = tl.load(grad_rendered + r[:, None] * K + kk[None, :],
                         mask=mr[:, None] & mk[None, :], other=0.0).to(tl.float64)
            v = tl.load(values + vrow + kk[None, None, :], mask=m3 & mk[None, None, :],
                        other=0.0).to(tl.float64)
            g += tl.sum(v * gr[:, None, :], axis=2)
    return tl.where(m, g, 0.0)


# ---------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------


@triton.jit
def _composite_fwd_kernel(sdf, z, beta, values, offsets, rendered, depth, opacity, weights,
                          R, S, K, NKB, last_delta: tl.float64, PACKED: tl.constexpr,
                          BETA_PER_RAY: tl.constexpr, HAS_VALUES: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    r, mr, start, n, inv = _ray_block(offsets, beta, R, S, PACKED, BETA_PER_RAY, BLOCK_R)
    nmax = tl.max(n, axis=0)
    odt = weights.dtype.element_ty
    # channel blocks outside the sample loop (weights recomputed per block; one block for
    # K <= BLOCK_K); the first block also stores weights, depth and opacity
    for kb in range(0, NKB):
        first = kb == 0
        kk = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        mk = kk < K
        carry = tl.zeros([BLOCK_R], tl.float64)
        acc_d = tl.zeros([BLOCK_R], tl.float64)
        acc_o = tl.zeros([BLOCK_R], tl.float64)
        acc_v = tl.zeros([BLOCK_R, BLOCK_K], tl.float64)
        for c0 in range(0, nmax, BLOCK_S):
            cl, m, idx, x, zz, delta, e, sigma, tau, mp, zp, sigp, taup = _chunk(
                sdf, z, start, n, inv, c0, last_delta, BLOCK_S)
            w, excl, carry = _weights(tau, taup, m, carry)
            if HAS_VALUES:
                v = tl.load(values + idx[:, :, None] * K + kk[None, None, :],
                            mask=m[:, :, None] & mk[None, None, :], other=0.0).to(tl.float64)
                acc_v += tl.sum(w[:, :, None] * v, axis=1)
            acc_d += tl.sum(w * zz, axis=1)
            acc_o += tl.sum(w, axis=1)
            tl.store(weights + idx, w.to(odt), mask=m & first)
        if HAS_VALUES:
            tl.store(rendered + r[:, None] * K + kk[None, :], acc_v.to(odt),
                     mask=mr[:, None] & mk[None, :])
        tl.store(depth + r, acc_d.to(odt), mask=mr & first)
        tl.store(opacity + r, acc_o.to(odt), mask=mr & first)


# ---------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------


@triton.jit
def _composite_bwd_kernel(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf, z, beta,
                          values, offsets, gsdf, gz, gbeta, gvalues, R, S, K,
                          last_delta: tl.float64, PACKED: tl.constexpr,
                          BETA_PER_RAY: tl.constexpr, HAS_GR: tl.constexpr,
                          HAS_GD: tl.constexpr, HAS_GO: tl.constexpr, HAS_GW: tl.constexpr,
                          NEED_SDF: tl.constexpr, NEED_Z: tl.constexpr,
                          NEED_BETA: tl.constexpr, NEED_VALUES: tl.constexpr,
                          NEED_DTAU: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    r, mr, start, n, inv = _ray_block(offsets, beta, R, S, PACKED, BETA_PER_RAY, BLOCK_R)
    nmax = tl.max(n, axis=0)
    odt = sdf.dtype.element_ty
    if HAS_GD:
        gd = tl.load(grad_depth + r, mask=mr, other=0.0).to(tl.float64)
    else:
        gd = tl.zeros([BLOCK_R], tl.float64)
    if HAS_GO:
        go = tl.load(grad_opacity + r, mask=mr, other=0.0).to(tl.float64)
    else:
        go = tl.zeros([BLOCK_R], tl.float64)
    inv2 = (inv * inv)[:, None]

    # pass 1: total = sum_i w_i g_i per ray
    total = tl.zeros([BLOCK_R], tl.float64)
    if NEED_DTAU:
        carry = tl.zeros([BLOCK_R], tl.float64)
        for c0 in range(0, nmax, BLOCK_S):
            cl, m, idx, x, zz, delta, e, sigma, tau, mp, zp, sigp, taup = _chunk(
                sdf, z, start, n, inv, c0, last_delta, BLOCK_S)
            w, excl, carry = _weights(tau, taup, m, carry)
            g = _dl_dw(grad_rendered, grad_weights, values, r, mr, idx, m, zz, gd, go, K,
                       HAS_GR, HAS_GW, BLOCK_K)
            total += tl.sum(w * g, axis=1)

    # pass 2: dL/dtau and the gradients
    carry = tl.zeros([BLOCK_R], tl.float64)
    carry_wg = tl.zeros([BLOCK_R], tl.float64)
    gb = tl.zeros([BLOCK_R], tl.float64)
    for c0 in range(0, nmax, BLOCK_S):
        cl, m, idx, x, zz, delta, e, sigma, tau, mp, zp, sigp, taup = _chunk(
            sdf, z, start, n, inv, c0, last_delta, BLOCK_S)
        w, excl, carry = _weights(tau, taup, m, carry)
        if NEED_DTAU:
            g = _dl_dw(grad_rendered, grad_weights, values, r, mr, idx, m, zz, gd, go, K,
                       HAS_GR, HAS_GW, BLOCK_K)
            wg = w * g
            prefix = carry_wg[:, None] + tl.cumsum(wg, axis=1)
            carry_wg += tl.sum(wg, axis=1)
            notlast = (cl + 1) < n[:, None]
            # sum_{j>i} w_j g_j; exactly 0 for the last sample (its delta is last_delta)
            suffix = tl.where(notlast, total[:, None] - prefix, 0.0)
            t_next = tl.exp(-(excl + tau))
            dtau = tl.where(m, g * t_next - suffix, 0.0)
            if NEED_SDF:
                tl.store(gsdf + idx, (dtau * delta * (-0.5 * e * inv2)).to(odt), mask=m)
            if NEED_BETA:
                out = x >= 0.0
                ax = tl.where(out, x, -x) * inv[:, None]
                # 0 where e underflowed (an infinite |sdf|: the limit, not 0 * inf = nan)
                hx = tl.where(e == 0.0, 0.0, 0.5 * e * (ax - 1.0))
                dsb = tl.where(out, hx, -hx - 1.0) * inv2
                gb += tl.sum(tl.where(m, dtau * delta * dsb, 0.0), axis=1)
            if NEED_Z:
                # dL/dtau_{i-1} = g_{i-1} T_i - sum_{j>=i} w_j g_j
                gp = _dl_dw(grad_rendered, grad_weights, values, r, mr, idx - 1, mp, zp, gd,
                            go, K, HAS_GR, HAS_GW, BLOCK_K)
                dtau_p = gp * tl.exp(-excl) - (total[:, None] - prefix + wg)
                gzi = gd[:, None] * w + tl.where(mp, dtau_p * sigp, 0.0) \
                    - tl.where(notlast, dtau * sigma, 0.0)
                tl.store(gz + idx, gzi.to(odt), mask=m)
        if NEED_VALUES:
            vrow = idx[:, :, None] * K
            m3 = m[:, :, None]
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                mk = kk < K
                gr = tl.load(grad_rendered + r[:, None] * K + kk[None, :],
                             mask=mr[:, None] & mk[None, :], other=0.0).to(tl.float64)
                tl.store(gvalues + vrow + kk[None, None, :],
                         (gr[:, None, :] * w[:, :, None]).to(odt), mask=m3 & mk[None, None, :])
    if NEED_BETA:
        tl.store(gbeta + r, gb.to(odt), mask=mr)


# ---------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------


def _np2(x):
    return triton.next_power_of_2(max(int(x), 1))


def _blocks(R, n_hint, K, backward=False):
    """(BLOCK_R, BLOCK_S, BLOCK_K, num_warps) for R rays of about n_hint samples."""
    if _BLOCKS is not None:
        br, bs, bk = _BLOCKS
        return br, bs, bk, 4
    if _interpreter_blocks():
        # the interpreter's cost is per program and per op, hardly per element
        bs = min(128, max(16, _np2(n_hint)))
        br = min(64, _np2(R))
        bk = min(64, _np2(K))
        return br, bs, bk, 4
    # float64 tiles, a dozen or two live in the backward: keep them at 256 elements
    # (2 per thread with 4 warps), and the [BLOCK_R, BLOCK_S, BLOCK_K] value tiles at 1024.
    # The backward runs 8 warps (1 element per thread): with 4, the cubins (tools/triton_check.py's
    # compile) of the renderer's launch, packed float32 with K=3 values, at each of these tiles
    # (4x64, 8x32, 16x16) spilled 240-1064 stack bytes at 255 registers on sm_80 and sm_90; with 8,
    # 239-254 registers and no spill, the same 8 warps per SM (2 blocks of 4 or 1 of 8). Static
    # figures only: no GPU has timed either.
    bs = min(64, max(16, _np2(n_hint)))
    br = 256 // bs
    while br > 1 and triton.cdiv(R, br) < 256:  # enough programs to fill the GPU
        br //= 2
    bk = max(1, min(_np2(K), 1024 // (br * bs)))
    return br, bs, bk, 8 if backward else 4


def _layout(sdf, values, offsets):
    """(R, S, M, K, packed, n_hint): S is the dense sample count, or M when packed (the
    kernels clamp the offsets to it)."""
    K = 0 if values is None else int(values.shape[-1])
    if offsets is None:
        if sdf.dim() != 2:
            raise ValueError(f"dense sdf must be [R, S], got {tuple(sdf.shape)}")
        R, S = (int(s) for s in sdf.shape)
        return R, S, R * S, K, False, S
    R = offsets.numel() - 1
    M = sdf.numel()
    return R, M, M, K, True, triton.cdiv(M, max(R, 1))


def _beta_per_ray(beta, R):
    if beta.numel() == 1:
        return False
    if beta.numel() != R:
        raise ValueError(f"beta must have 1 or R = {R} elements, got {beta.numel()}")
    return True


def _given(t):
    return t is not None and t.numel() > 0


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def composite_fwd(sdf, z, beta, values, offsets, last_delta):
    """-> (rendered [R, K], depth [R], opacity [R], weights like sdf)."""
    sdf, z, beta, values, offsets = _contiguous(sdf, z, beta, values, offsets)
    R, S, M, K, packed, n_hint = _layout(sdf, values, offsets)
    if R == 0 or M == 0:
        return sdf.new_zeros(R, K), sdf.new_zeros(R), sdf.new_zeros(R), torch.zeros_like(sdf)
    br, bs, bk, num_warps = _blocks(R, n_hint, K)
    rendered = sdf.new_empty(R, K)
    depth = sdf.new_empty(R)
    opacity = sdf.new_empty(R)
    weights = torch.empty_like(sdf)
    has_values = values is not None and K > 0
    nkb = triton.cdiv(K, bk) if has_values else 1
    _composite_fwd_kernel[(triton.cdiv(R, br),)](
        sdf, z, beta, values if has_values else sdf, offsets if packed else sdf,
        rendered if has_values else sdf, depth, opacity, weights,
        R, S, K, nkb, float(last_delta), PACKED=packed, BETA_PER_RAY=_beta_per_ray(beta, R),
        HAS_VALUES=has_values, BLOCK_R=br, BLOCK_S=bs, BLOCK_K=bk, num_warps=num_warps)
    return rendered, depth, opacity, weights


def composite_bwd(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf, z, beta, values,
                  offsets, last_delta, need_sdf, need_z, need_beta, need_values, weights=None):
    """-> (grad_sdf like sdf, grad_z like z, grad_beta [R] (per ray), grad_values like
    values); an empty tensor for an output that is not needed (and for grad_values when
    values is None). A None or empty upstream gradient counts as zero. ``weights`` (the
    forward's, an optional hint of the contract) is not used: this kernel recomputes them."""
    sdf, z, beta, values, offsets = _contiguous(sdf, z, beta, values, offsets)
    R, S, M, K, packed, n_hint = _layout(sdf, values, offsets)
    need_sdf, need_z, need_beta = bool(need_sdf), bool(need_z), bool(need_beta)
    need_values = bool(need_values) and values is not None
    has_gr = _given(grad_rendered) and values is not None and K > 0
    has_gd, has_go, has_gw = _given(grad_depth), _given(grad_opacity), _given(grad_weights)
    run_dtau = (need_sdf or need_z or need_beta) and (has_gr or has_gd or has_go or has_gw)
    run_values = need_values and has_gr
    # a fresh empty tensor per output not needed: outputs of a custom op must not alias
    alloc = torch.empty if R > 0 and M > 0 and run_dtau else torch.zeros
    gsdf = alloc(sdf.shape, dtype=sdf.dtype, device=sdf.device) if need_sdf else sdf.new_empty(0)
    gz = alloc(z.shape, dtype=z.dtype, device=z.device) if need_z else sdf.new_empty(0)
    gbeta = alloc((R,), dtype=sdf.dtype, device=sdf.device) if need_beta else sdf.new_empty(0)
    alloc_v = torch.empty if R > 0 and M > 0 and run_values else torch.zeros
    gvalues = alloc_v(values.shape, dtype=values.dtype, device=values.device) \
        if need_values else sdf.new_empty(0)
    if R == 0 or M == 0 or not (run_dtau or run_values):
        return gsdf, gz, gbeta, gvalues
    br, bs, bk, num_warps = _blocks(R, n_hint, K, backward=True)
    _composite_bwd_kernel[(triton.cdiv(R, br),)](
        grad_rendered.contiguous() if has_gr else sdf,
        grad_depth.contiguous() if has_gd else sdf,
        grad_opacity.contiguous() if has_go else sdf,
        grad_weights.contiguous() if has_gw else sdf,
        sdf, z, beta, values if values is not None else sdf, offsets if packed else sdf,
        gsdf if need_sdf and run_dtau else sdf, gz if need_z and run_dtau else sdf,
        gbeta if need_beta and run_dtau else sdf, gvalues if run_values else sdf,
        R, S, K, float(last_delta), PACKED=packed, BETA_PER_RAY=_beta_per_ray(beta, R),
        HAS_GR=has_gr, HAS_GD=has_gd, HAS_GO=has_go, HAS_GW=has_gw,
        NEED_SDF=need_sdf and run_dtau, NEED_Z=need_z and run_dtau,
        NEED_BETA=need_beta and run_dtau, NEED_VALUES=run_values, NEED_DTAU=run_dtau,
        BLOCK_R=br, BLOCK_S=bs, BLOCK_K=bk, num_warps=num_warps)
    return gsdf, gz, gbeta, gvalues
