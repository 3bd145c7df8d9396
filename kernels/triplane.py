"""Triton backend of tri-plane bilinear sampling (the contract of csrc/bindings.cpp).

Same signatures and numerics as ``npht.reference.triplane.triplane_fwd/bwd/bwd2`` and the
per-element math of ``csrc/include/npht/triplane_math.h``: grid_sample's bilinear
conventions, border clamp with zero gradient, size-1 ``align_corners`` maps to pixel 0,
far-away / infinite points have no corner on the plane, and a NaN in the two coordinates a
plane reads gives NaN features from that plane and no gradient from that (point, plane).

Computation is in float64 for float64 planes and float32 otherwise (half / bfloat16 values
are converted right after loading). Each program handles BLOCK_N points x BLOCK_C channels
and loops over channel blocks; the corner footprint of a point is a set of [BLOCK_N]
vectors, corner values are [BLOCK_N, BLOCK_C] tiles loaded under masks (invalid corners are
never read), gradients to the planes are scattered with atomic adds into a float32 /
float64 buffer, gradients to the points are channel reductions (tl.sum) owned by the
program, so they are stored without atomics.

Only long-stable Triton APIs are used (load/store/atomic_add with masks, where, sum,
floor, arange, program_id, constexpr); no autotuning.
"""

import torch
import triton
import triton.language as tl

from ._env import block_override as _block_override
from ._env import interpreter_blocks as _interpreter_blocks
from ._env import interpreting as _interpreting

__all__ = ["triplane_fwd", "triplane_bwd", "triplane_bwd2"]

_MAX_BLOCK_C = 64


# ---------------------------------------------------------------------------------------
# per-element helpers (few and large: the interpreter pays per helper call)
# ---------------------------------------------------------------------------------------


@triton.jit
def _add2(g0, g1, g2, U: tl.constexpr, V: tl.constexpr, gu, gv):
    """Adds gu to coordinate U and gv to coordinate V of the point gradient."""
    if U == 0:
        g0 = g0 + gu
    elif U == 1:
        g1 = g1 + gu
    else:
        g2 = g2 + gu
    if V == 0:
        g0 = g0 + gv
    elif V == 1:
        g1 = g1 + gv
    else:
        g2 = g2 + gv
    return g0, g1, g2


@triton.jit
def _point_block(BN, N, scale, CDT: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's BLOCK_N flattened point indices, their mask, batch index and the
    coordinate scale as a vector."""
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    return n, n < BN, n // N, tl.full([BLOCK_N], scale, CDT)


@triton.jit
def _load_grad_out(grad_out, n, mn, offs_c, cm, OC, K, C, AGG: tl.constexpr, CDT: tl.constexpr):
    """Upstream gradient of plane K's samples [BLOCK_N, BLOCK_C], aggregate weight included."""
    if AGG == 2:
        go_rows = n * OC + K * C
    else:
        go_rows = n * OC
    go = tl.load(grad_out + go_rows[:, None] + offs_c[None, :], mask=mn[:, None] & cm,
                 other=0.0).to(CDT)
    if AGG == 1:
        go = go / 3.0
    return go


@triton.jit
def _store_points(gpoints, n, mn, g0, g1, g2):
    pdt = gpoints.dtype.element_ty
    tl.store(gpoints + n * 3 + 0, g0.to(pdt), mask=mn)
    tl.store(gpoints + n * 3 + 1, g1.to(pdt), mask=mn)
    tl.store(gpoints + n * 3 + 2, g2.to(pdt), mask=mn)


@triton.jit
def _setup(points, n, mn, sc, H, W, U: tl.constexpr, V: tl.constexpr, ALIGN: tl.constexpr,
           PAD: tl.constexpr, CDT: tl.constexpr):
    """The bilinear footprint of BLOCK_N points on one plane (plane_setup() of the header).

    Returns idx0 (y0 * W + x0, int64), the four corner masks (row mask mn included), tx,
    ty (0 where the point has no corner), dix, diy (0 likewise) and fill (NaN for a NaN
    coordinate, else 0)."""
    pu = tl.load(points + n * 3 + U, mask=mn, other=0.0).to(CDT)
    pv = tl.load(points + n * 3 + V, mask=mn, other=0.0).to(CDT)
    isn = (pu != pu) | (pv != pv)
    gu = pu * sc
    gv = pv * sc
    Wf = W.to(CDT)
    Hf = H.to(CDT)
    # source_index(): grid coordinate -> pixel coordinate and d pixel / d grid
    if ALIGN:
        ix = (gu + 1.0) / 2.0 * (Wf - 1.0)
        iy = (gv + 1.0) / 2.0 * (Hf - 1.0)
        # size 1: every coordinate maps to pixel 0 (also +-inf, where inf * 0 is NaN)
        ix = tl.where(W > 1, ix, 0.0)
        iy = tl.where(H > 1, iy, 0.0)
        dgx = tl.zeros_like(gu) + (Wf - 1.0) / 2.0
        dgy = tl.zeros_like(gv) + (Hf - 1.0) / 2.0
    else:
        ix = ((gu + 1.0) * Wf - 1.0) / 2.0
        iy = ((gv + 1.0) * Hf - 1.0) / 2.0
        dgx = tl.zeros_like(gu) + Wf / 2.0
        dgy = tl.zeros_like(gv) + Hf / 2.0
    if PAD == 1:
        lox = ix <= 0.0
        hix = ix >= Wf - 1.0
        dgx = tl.where(lox | hix, 0.0, dgx)
        ix = tl.where(lox, 0.0, tl.where(hix, Wf - 1.0, ix))
        loy = iy <= 0.0
        hiy = iy >= Hf - 1.0
        dgy = tl.where(loy | hiy, 0.0, dgy)
        iy = tl.where(loy, 0.0, tl.where(hiy, Hf - 1.0, iy))
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    # decide in floating point: far-away / infinite points have no corner (NaN: false)
    inr = (x0f >= -1.0) & (x0f <= Wf - 1.0) & (y0f >= -1.0) & (y0f <= Hf - 1.0)
    inr = inr & (isn == 0) & mn
    x0f = tl.where(inr, x0f, 0.0)
    y0f = tl.where(inr, y0f, 0.0)
    tx = tl.where(inr, ix - x0f, 0.0)
    ty = tl.where(inr, iy - y0f, 0.0)
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    vx0 = x0 >= 0
    vx1 = (x0 + 1) < W
    vy0 = y0 >= 0
    vy1 = (y0 + 1) < H
    m0 = inr & vx0 & vy0
    m1 = inr & vx1 & vy0
    m2 = inr & vx0 & vy1
    m3 = inr & vx1 & vy1
    idx0 = y0.to(tl.int64) * W + x0.to(tl.int64)
    dix = tl.where(inr, dgx * sc, 0.0)
    diy = tl.where(inr, dgy * sc, 0.0)
    fill = tl.where(isn, (pu - pu) + (pv - pv), 0.0)
    return idx0, m0, m1, m2, m3, tx, ty, dix, diy, fill


# ---------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------


@triton.jit
def _fwd_plane(planes, points, n, mn, b, sc, offs_c, mc, H, W, C, HWC,
               K: tl.constexpr, U: tl.constexpr, V: tl.constexpr, PAD: tl.constexpr,
               ALIGN: tl.constexpr, CDT: tl.constexpr):
    idx0, m0, m1, m2, m3, tx, ty, dix, diy, fill = _setup(points, n, mn, sc, H, W, U, V,
                                                          ALIGN, PAD, CDT)
    a0 = (b * 3 + K) * HWC + idx0 * C
    p = planes + a0[:, None] + offs_c[None, :]
    cm = mc[None, :]
    f0 = tl.load(p, mask=m0[:, None] & cm, other=0.0).to(CDT)
    f1 = tl.load(p + C, mask=m1[:, None] & cm, other=0.0).to(CDT)
    f2 = tl.load(p + W * C, mask=m2[:, None] & cm, other=0.0).to(CDT)
    f3 = tl.load(p + W * C + C, mask=m3[:, None] & cm, other=0.0).to(CDT)
    w0 = (1.0 - tx) * (1.0 - ty)
    w1 = tx * (1.0 - ty)
    w2 = (1.0 - tx) * ty
    w3 = tx * ty
    v = w0[:, None] * f0 + w1[:, None] * f1 + w2[:, None] * f2 + w3[:, None] * f3
    return v + fill[:, None]


@triton.jit(do_not_specialize=["H", "W"])
def _triplane_fwd_kernel(planes, points, out, BN, N, H, W, C, HWC, OC, scale: tl.float64,
                         U0: tl.constexpr, V0: tl.constexpr, U1: tl.constexpr,
                         V1: tl.constexpr, U2: tl.constexpr, V2: tl.constexpr,
                         AGG: tl.constexpr, PAD: tl.constexpr, ALIGN: tl.constexpr,
                         CDT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    n, mn, b, sc = _point_block(BN, N, scale, CDT, BLOCK_N)
    odt = out.dtype.element_ty
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        msk = mn[:, None] & mc[None, :]
        v0 = _fwd_plane(planes, points, n, mn, b, sc, offs_c, mc, H, W, C, HWC, 0, U0, V0,
                        PAD, ALIGN, CDT)
        v1 = _fwd_plane(planes, points, n, mn, b, sc, offs_c, mc, H, W, C, HWC, 1, U1, V1,
                        PAD, ALIGN, CDT)
        v2 = _fwd_plane(planes, points, n, mn, b, sc, offs_c, mc, H, W, C, HWC, 2, U2, V2,
                        PAD, ALIGN, CDT)
        optr = out + (n * OC)[:, None] + offs_c[None, :]
        if AGG == 2:
            tl.store(optr, v0.to(odt), mask=msk)
            tl.store(optr + C, v1.to(odt), mask=msk)
            tl.store(optr + 2 * C, v2.to(odt), mask=msk)
        else:
            v = v0 + v1 + v2
            if AGG == 1:
                v = v / 3.0
            tl.store(optr, v.to(odt), mask=msk)


# ---------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------


@triton.jit
def _bwd_plane(planes, points, grad_out, gplanes, n, mn, b, sc, offs_c, mc, H, W, C, HWC, OC,
               K: tl.constexpr, U: tl.constexpr, V: tl.constexpr, AGG: tl.constexpr,
               PAD: tl.constexpr, ALIGN: tl.constexpr, CDT: tl.constexpr,
               NEED_PLANES: tl.constexpr, NEED_POINTS: tl.constexpr):
    idx0, m0, m1, m2, m3, tx, ty, dix, diy, fill = _setup(points, n, mn, sc, H, W, U, V,
                                                          ALIGN, PAD, CDT)
    a0 = (b * 3 + K) * HWC + idx0 * C
    cm = mc[None, :]
    go = _load_grad_out(grad_out, n, mn, offs_c, cm, OC, K, C, AGG, CDT)
    gu = tl.zeros_like(tx)
    gv = tl.zeros_like(tx)
    if NEED_PLANES:
        q = gplanes + a0[:, None] + offs_c[None, :]
        w0 = (1.0 - tx) * (1.0 - ty)
        w1 = tx * (1.0 - ty)
        w2 = (1.0 - tx) * ty
        w3 = tx * ty
        tl.atomic_add(q, go * w0[:, None], mask=m0[:, None] & cm, sem="relaxed")
        tl.atomic_add(q + C, go * w1[:, None], mask=m1[:, None] & cm, sem="relaxed")
        tl.atomic_add(q + W * C, go * w2[:, None], mask=m2[:, None] & cm, sem="relaxed")
        tl.atomic_add(q + W * C + C, go * w3[:, None], mask=m3[:, None] & cm, sem="relaxed")
    if NEED_POINTS:
        p = planes + a0[:, None] + offs_c[None, :]
        f0 = tl.load(p, mask=m0[:, None] & cm, other=0.0).to(CDT)
        f1 = tl.load(p + C, mask=m1[:, None] & cm, other=0.0).to(CDT)
        f2 = tl.load(p + W * C, mask=m2[:, None] & cm, other=0.0).to(CDT)
        f3 = tl.load(p + W * C + C, mask=m3[:, None] & cm, other=0.0).to(CDT)
        # wx = (-(1-ty), 1-ty, -ty, ty), wy = (-(1-tx), -tx, 1-tx, tx)
        dx = (1.0 - ty)[:, None] * (f1 - f0) + ty[:, None] * (f3 - f2)
        dy = (1.0 - tx)[:, None] * (f2 - f0) + tx[:, None] * (f3 - f1)
        gu = tl.sum(go * dx, axis=1) * dix
        gv = tl.sum(go * dy, axis=1) * diy
    return gu, gv


@triton.jit(do_not_specialize=["H", "W"])
def _triplane_bwd_kernel(grad_out, planes, points, gplanes, gpoints, BN, N, H, W, C, HWC, OC,
                         scale: tl.float64,
                         U0: tl.constexpr, V0: tl.constexpr, U1: tl.constexpr,
                         V1: tl.constexpr, U2: tl.constexpr, V2: tl.constexpr,
                         AGG: tl.constexpr, PAD: tl.constexpr, ALIGN: tl.constexpr,
                         CDT: tl.constexpr, NEED_PLANES: tl.constexpr,
                         NEED_POINTS: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    n, mn, b, sc = _point_block(BN, N, scale, CDT, BLOCK_N)
    g0 = tl.zeros([BLOCK_N], CDT)
    g1 = tl.zeros([BLOCK_N], CDT)
    g2 = tl.zeros([BLOCK_N], CDT)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        gu, gv = _bwd_plane(planes, points, grad_out, gplanes, n, mn, b, sc, offs_c, mc, H, W,
                            C, HWC, OC, 0, U0, V0, AGG, PAD, ALIGN, CDT, NEED_PLANES,
                            NEED_POINTS)
        g0, g1, g2 = _add2(g0, g1, g2, U0, V0, gu, gv)
        gu, gv = _bwd_plane(planes, points, grad_out, gplanes, n, mn, b, sc, offs_c, mc, H, W,
                            C, HWC, OC, 1, U1, V1, AGG, PAD, ALIGN, CDT, NEED_PLANES,
                            NEED_POINTS)
        g0, g1, g2 = _add2(g0, g1, g2, U1, V1, gu, gv)
        gu, gv = _bwd_plane(planes, points, grad_out, gplanes, n, mn, b, sc, offs_c, mc, H, W,
                            C, HWC, OC, 2, U2, V2, AGG, PAD, ALIGN, CDT, NEED_PLANES,
                            NEED_POINTS)
        g0, g1, g2 = _add2(g0, g1, g2, U2, V2, gu, gv)
    if NEED_POINTS:
        _store_points(gpoints, n, mn, g0, g1, g2)


# ---------------------------------------------------------------------------------------
# double backward (the vjp of the backward)
# ---------------------------------------------------------------------------------------


@triton.jit
def _bwd2_plane(planes, points, gg_planes, gg_points, grad_out, gplanes, n, mn, b, sc, offs_c,
                mc, H, W, C, HWC, OC, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
                AGG: tl.constexpr, PAD: tl.constexpr, ALIGN: tl.constexpr, CDT: tl.constexpr,
                HAS_GGPL: tl.constexpr, HAS_GGPT: tl.constexpr, NEED_GO: tl.constexpr,
                NEED_PLANES: tl.constexpr, NEED_POINTS: tl.constexpr, LOAD_GO: tl.constexpr,
                LOAD_F: tl.constexpr, LOAD_G: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_C: tl.constexpr):
    idx0, m0, m1, m2, m3, tx, ty, dix, diy, fill = _setup(points, n, mn, sc, H, W, U, V,
                                                          ALIGN, PAD, CDT)
    a0 = (b * 3 + K) * HWC + idx0 * C
    cm = mc[None, :]
    if HAS_GGPT:
        qx = tl.load(gg_points + n * 3 + U, mask=mn, other=0.0).to(CDT) * dix
        qy = tl.load(gg_points + n * 3 + V, mask=mn, other=0.0).to(CDT) * diy
    sy = (1.0 - ty)[:, None]
    ty2 = ty[:, None]
    sx = (1.0 - tx)[:, None]
    tx2 = tx[:, None]
    t = tl.zeros([BLOCK_N, BLOCK_C], CDT)
    gu = tl.zeros_like(tx)
    gv = tl.zeros_like(tx)
    if LOAD_GO:
        go = _load_grad_out(grad_out, n, mn, offs_c, cm, OC, K, C, AGG, CDT)
    if LOAD_F:
        p = planes + a0[:, None] + offs_c[None, :]
        f0 = tl.load(p, mask=m0[:, None] & cm, other=0.0).to(CDT)
        f1 = tl.load(p + C, mask=m1[:, None] & cm, other=0.0).to(CDT)
        f2 = tl.load(p + W * C, mask=m2[:, None] & cm, other=0.0).to(CDT)
        f3 = tl.load(p + W * C + C, mask=m3[:, None] & cm, other=0.0).to(CDT)
        dxF = sy * (f1 - f0) + ty2 * (f3 - f2)
        dyF = sx * (f2 - f0) + tx2 * (f3 - f1)
        xyF = f0 - f1 - f2 + f3
    if LOAD_G:
        pg = gg_planes + a0[:, None] + offs_c[None, :]
        G0 = tl.load(pg, mask=m0[:, None] & cm, other=0.0).to(CDT)
        G1 = tl.load(pg + C, mask=m1[:, None] & cm, other=0.0).to(CDT)
        G2 = tl.load(pg + W * C, mask=m2[:, None] & cm, other=0.0).to(CDT)
        G3 = tl.load(pg + W * C + C, mask=m3[:, None] & cm, other=0.0).to(CDT)
        dxG = sy * (G1 - G0) + ty2 * (G3 - G2)
        dyG = sx * (G2 - G0) + tx2 * (G3 - G1)
    if NEED_GO:
        if HAS_GGPL:
            t += sx * sy * G0 + tx2 * sy * G1 + sx * ty2 * G2 + tx2 * ty2 * G3
        if HAS_GGPT:
            t += qx[:, None] * dxF + qy[:, None] * dyF
        if AGG == 1:
            t = t / 3.0
    if NEED_PLANES:
        if HAS_GGPT:
            # corner j gets go * (qx * wx_j + qy * wy_j)
            c0 = -(qx * (1.0 - ty) + qy * (1.0 - tx))
            c1 = qx * (1.0 - ty) - qy * tx
            c2 = qy * (1.0 - tx) - qx * ty
            c3 = qx * ty + qy * tx
            q = gplanes + a0[:, None] + offs_c[None, :]
            tl.atomic_add(q, go * c0[:, None], mask=m0[:, None] & cm, sem="relaxed")
            tl.atomic_add(q + C, go * c1[:, None], mask=m1[:, None] & cm, sem="relaxed")
            tl.atomic_add(q + W * C, go * c2[:, None], mask=m2[:, None] & cm, sem="relaxed")
            tl.atomic_add(q + W * C + C, go * c3[:, None], mask=m3[:, None] & cm,
                          sem="relaxed")
    if NEED_POINTS:
        hx = tl.zeros([BLOCK_N, BLOCK_C], CDT)
        hy = tl.zeros([BLOCK_N, BLOCK_C], CDT)
        if HAS_GGPL:
            hx += dxG
            hy += dyG
        if HAS_GGPT:
            hx += qy[:, None] * xyF
            hy += qx[:, None] * xyF
        gu = tl.sum(go * hx, axis=1) * dix
        gv = tl.sum(go * hy, axis=1) * diy
    return t, gu, gv


@triton.jit(do_not_specialize=["H", "W"])
def _triplane_bwd2_kernel(gg_planes, gg_points, grad_out, planes, points, ggo, gplanes,
                          gpoints, BN, N, H, W, C, HWC, OC, scale: tl.float64,
                          U0: tl.constexpr, V0: tl.constexpr, U1: tl.constexpr,
                          V1: tl.constexpr, U2: tl.constexpr, V2: tl.constexpr,
                          AGG: tl.constexpr, PAD: tl.constexpr, ALIGN: tl.constexpr,
                          CDT: tl.constexpr, HAS_GGPL: tl.constexpr, HAS_GGPT: tl.constexpr,
                          NEED_GO: tl.constexpr, NEED_PLANES: tl.constexpr,
                          NEED_POINTS: tl.constexpr, LOAD_GO: tl.constexpr,
                          LOAD_F: tl.constexpr, LOAD_G: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    n, mn, b, sc = _point_block(BN, N, scale, CDT, BLOCK_N)
    g0 = tl.zeros([BLOCK_N], CDT)
    g1 = tl.zeros([BLOCK_N], CDT)
    g2 = tl.zeros([BLOCK_N], CDT)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        t0, gu, gv = _bwd2_plane(planes, points, gg_planes, gg_points, grad_out, gplanes, n, mn,
                                 b, sc, offs_c, mc, H, W, C, HWC, OC, 0, U0, V0, AGG, PAD, ALIGN,
                                 CDT, HAS_GGPL, HAS_GGPT, NEED_GO, NEED_PLANES, NEED_POINTS,
                                 LOAD_GO, LOAD_F, LOAD_G, BLOCK_N, BLOCK_C)
        g0, g1, g2 = _add2(g0, g1, g2, U0, V0, gu, gv)
        t1, gu, gv = _bwd2_plane(planes, points, gg_planes, gg_points, grad_out, gplanes, n, mn,
                                 b, sc, offs_c, mc, H, W, C, HWC, OC, 1, U1, V1, AGG, PAD, ALIGN,
                                 CDT, HAS_GGPL, HAS_GGPT, NEED_GO, NEED_PLANES, NEED_POINTS,
                                 LOAD_GO, LOAD_F, LOAD_G, BLOCK_N, BLOCK_C)
        g0, g1, g2 = _add2(g0, g1, g2, U1, V1, gu, gv)
        t2, gu, gv = _bwd2_plane(planes, points, gg_planes, gg_points, grad_out, gplanes, n, mn,
                                 b, sc, offs_c, mc, H, W, C, HWC, OC, 2, U2, V2, AGG, PAD, ALIGN,
                                 CDT, HAS_GGPL, HAS_GGPT, NEED_GO, NEED_PLANES, NEED_POINTS,
                                 LOAD_GO, LOAD_F, LOAD_G, BLOCK_N, BLOCK_C)
        g0, g1, g2 = _add2(g0, g1, g2, U2, V2, gu, gv)
        if NEED_GO:
            odt = ggo.dtype.element_ty
            msk = mn[:, None] & mc[None, :]
            optr = ggo + (n * OC)[:, None] + offs_c[None, :]
            if AGG == 2:
                tl.store(optr, t0.to(odt), mask=msk)
                tl.store(optr + C, t1.to(odt), mask=msk)
                tl.store(optr + 2 * C, t2.to(odt), mask=msk)
            else:
                tl.store(optr, (t0 + t1 + t2).to(odt), mask=msk)
    if NEED_POINTS:
        _store_points(gpoints, n, mn, g0, g1, g2)


# ---------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------


def _store_dtype(dtype):
    """Dtype a kernel writes an output of `dtype` in. The interpreter converts float32 to
    bfloat16 by truncation (GPUs round to nearest even), so there bfloat16 outputs are
    written in float32 and converted by torch."""
    if dtype == torch.bfloat16 and _interpreting():
        return torch.float32
    return dtype


def _cdt(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(BN, C):
    """(BLOCK_N points, BLOCK_C channels, num_warps). On a GPU ``NPHT_TRIPLANE_BLOCKS=
    "BLOCK_N,BLOCK_C,WARPS"`` overrides the choice (tools/tune_triplane.py: compiled for
    sm_90 with C = 32, the default 128 x 32 tile keeps 1-5 KiB per thread in local memory
    in all three kernels, 128 x 8 with 8 warps none in the forward and backward; no GPU
    has timed the difference yet)."""
    block_c = min(triton.next_power_of_2(max(int(C), 1)), _MAX_BLOCK_C)
    if _interpreter_blocks():
        # the interpreter's cost is per program and per op, hardly per element
        block_n = min(512, max(16, triton.next_power_of_2(max(int(BN), 1))))
    else:
        override = _block_override("NPHT_TRIPLANE_BLOCKS", "BLOCK_N,BLOCK_C,WARPS", (16, 1, 1))
        if override:
            return override
        block_n = min(128, max(32, 4096 // block_c))
    num_warps = 4 if block_n * block_c <= 2048 else 8
    return block_n, block_c, num_warps


def _axes6(axes):
    axes = [int(a) for a in axes]
    if len(axes) != 6 or any(a < 0 or a > 2 for a in axes):
        raise ValueError(f"axes must be 6 ints in [0, 2], got {axes}")
    return axes


def _check(planes, points):
    if planes.dim() != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must be [B, 3, H, W, C], got {tuple(planes.shape)}")
    if points.dim() != 3 or points.shape[2] != 3 or points.shape[0] != planes.shape[0]:
        raise ValueError(f"points must be [B, N, 3] with the planes' B, got {tuple(points.shape)}")
    B, _, H, W, C = planes.shape
    N = points.shape[1]
    return B, N, H, W, C


def _out_channels(C, aggregate):
    return 3 * C if int(aggregate) == 2 else C


def _common(planes, points, axes, scale, aggregate, padding, align_corners):
    B, N, H, W, C = _check(planes, points)
    block_n, block_c, num_warps = _blocks(B * N, C)
    u0, v0, u1, v1, u2, v2 = _axes6(axes)
    OC = _out_channels(C, aggregate)
    sizes = (B * N, N, H, W, C, H * W * C, OC, float(scale))
    meta = dict(U0=u0, V0=v0, U1=u1, V1=v1, U2=u2, V2=v2, AGG=int(aggregate),
                PAD=int(padding), ALIGN=bool(align_corners), CDT=_cdt(planes.dtype),
                BLOCK_N=block_n, BLOCK_C=block_c, num_warps=num_warps)
    grid = (triton.cdiv(B * N, block_n),)
    empty = B * N == 0 or C == 0 or H * W == 0
    return B, N, C, OC, sizes, meta, grid, empty


def triplane_fwd(planes, points, axes, scale, aggregate, padding, align_corners):
    """planes [B, 3, H, W, C] -> [B, N, C] (sum, mean) or [B, N, 3C] (concat)."""
    planes = planes.contiguous()
    points = points.contiguous()
    B, N, C, OC, sizes, meta, grid, empty = _common(planes, points, axes, scale, aggregate,
                                                   padding, align_corners)
    if empty:
        return planes.new_zeros((B, N, OC))
    out = torch.empty((B, N, OC), dtype=_store_dtype(planes.dtype), device=planes.device)
    _triplane_fwd_kernel[grid](planes, points, out, *sizes, **meta)
    return out.to(planes.dtype)


def triplane_bwd(grad_out, planes, points, axes, scale, aggregate, padding, align_corners,
                 need_planes, need_points):
    """(grad_planes, grad_points); an empty tensor for an output that is not needed."""
    planes = planes.contiguous()
    points = points.contiguous()
    grad_out = grad_out.contiguous()
    B, N, C, OC, sizes, meta, grid, empty = _common(planes, points, axes, scale, aggregate,
                                                   padding, align_corners)
    acc = _acc_dtype(planes.dtype)
    gplanes = torch.zeros(planes.shape, dtype=acc, device=planes.device) if need_planes else None
    gpoints = torch.zeros_like(points) if need_points else None
    if not empty and (need_planes or need_points):
        _triplane_bwd_kernel[grid](
            grad_out, planes, points,
            gplanes if need_planes else planes, gpoints if need_points else points,
            *sizes, NEED_PLANES=bool(need_planes), NEED_POINTS=bool(need_points), **meta)
    gp = gplanes.to(planes.dtype) if need_planes else planes.new_empty(0)
    gx = gpoints if need_points else points.new_empty(0)
    return gp, gx


def triplane_bwd2(gg_planes, gg_points, grad_out, planes, points, axes, scale, aggregate,
                  padding, align_corners, need_grad_out, need_planes, need_points):
    """(grad_grad_out, grad_planes, grad_points): the vjp of triplane_bwd for upstream
    gradients gg_planes and gg_points (either may be None)."""
    planes = planes.contiguous()
    points = points.contiguous()
    grad_out = grad_out.contiguous()
    B, N, C, OC, sizes, meta, grid, empty = _common(planes, points, axes, scale, aggregate,
                                                   padding, align_corners)
    has_gpl = gg_planes is not None
    has_gpt = gg_points is not None
    need_go, need_pl, need_pt = bool(need_grad_out), bool(need_planes), bool(need_points)
    acc = _acc_dtype(planes.dtype)
    ggo = None
    if need_go:
        ggo = (torch.zeros if empty or not (has_gpl or has_gpt) else torch.empty)(
            grad_out.shape, dtype=_store_dtype(grad_out.dtype), device=grad_out.device)
    gplanes = torch.zeros(planes.shape, dtype=acc, device=planes.device) if need_pl else None
    gpoints = torch.zeros_like(points) if need_pt else None
    # which outputs get a nonzero contribution
    run_go = need_go and (has_gpl or has_gpt)
    run_pl = need_pl and has_gpt
    run_pt = need_pt and (has_gpl or has_gpt)
    if not empty and (run_go or run_pl or run_pt):
        gg_planes_t = gg_planes.contiguous() if has_gpl else planes
        gg_points_t = gg_points.contiguous() if has_gpt else points
        _triplane_bwd2_kernel[grid](
            gg_planes_t, gg_points_t, grad_out, planes, points,
            ggo if need_go else grad_out, gplanes if need_pl else planes,
            gpoints if need_pt else points, *sizes,
            HAS_GGPL=has_gpl, HAS_GGPT=has_gpt, NEED_GO=run_go, NEED_PLANES=run_pl,
            NEED_POINTS=run_pt, LOAD_GO=run_pl or run_pt, LOAD_F=has_gpt and (run_go or run_pt),
            LOAD_G=has_gpl and (run_go or run_pt), **meta)
    r_go = ggo.to(grad_out.dtype) if need_go else grad_out.new_empty(0)
    r_pl = gplanes.to(planes.dtype) if need_pl else planes.new_empty(0)
    r_pt = gpoints if need_pt else points.new_empty(0)
    return r_go, r_pl, r_pt
