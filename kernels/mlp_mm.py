"""Triton matrix products of the fused softplus-MLP gradient (npht.softplus_mlp_with_grad with
``matmul="triton"``), with the elementwise steps around them done in the product's prologue
(on the left operand's tiles as they are loaded) or epilogue (on the result's tiles before
they are stored). Each step of the MLP's three passes then reads and writes its ``[M, W]``
arrays once, where a torch matmul plus separate elementwise kernels passes over them two or
three times; at the widths of SDF decoders (256) these products should be memory-bound with
TF32 (an estimate from an H100's bandwidth and tensor-core rate; no GPU timing of these
kernels exists yet: tools/tune_mlp_mm.py), so the passes would be the time.

With ``s = softplus(beta, threshold)``, ``s'``, and ``q = s''/s'`` (kernels/mlp.py), row
arrays ``[M, *]`` contiguous in their last dim, ``w`` a layer's weight ``[out, in]``:

- ``linear(a, w, bias, softplus_input)``: ``P(a) w^T + bias``, ``P = s`` or identity
  (the forward pass: ``h_l = s(h_{l-1}) W_l^T + b_l``);
- ``reverse_step(d, h, w)``: ``(d * s'(h)) w`` (the input-gradient pass:
  ``d_{l-1} = e_l W_l`` with ``e_l = d_l s'(h_l)``); ``d`` may be one row ``[out]``,
  broadcast over the rows;
- ``adjoint_step(dbar, w, d, h)``: ``ebar = dbar w^T``, then in the epilogue
  ``(ebar s'(h), ebar d s''(h))``: the next ``dbar`` and the adjoint's contribution to
  ``hbar`` (``d`` may be one row);
- ``down_step(hbar, w, h, hadj)``: ``abar = hbar w``, then ``hadj + abar s'(h)`` (into
  ``hadj``'s buffer when given, else a new array);
- ``output_step(h, gy, w_out, hadj)``: the output layer's backward (no product):
  ``hbar = hadj + gy w_out s'(h)`` and the column sums its bias and weight gradients need;
- ``weight_grad(a, b, a_h, b_softplus)``: a weight gradient ``P(a)^T Q(b)`` reduced over
  rows with ``P(a) = a s'(a_h)`` or ``Q(b) = s(b)`` applied as the tiles are loaded (so
  neither factor is written out first).

``adjoint_step`` and ``down_step`` take ``colsum=True`` to also return their result's column
sums (the next bias gradient), summed in the epilogue per row block.

With float32 weights, the pre-activations ``h`` and the gradient pass' vectors ``d`` may be
stored in float16 (``linear`` / ``reverse_step`` write them so with ``out_dtype``; every
kernel converts what it loads to float32 and computes in float32). Gradients of the backward
(``dbar``, ``hbar``, ``hadj``) stay in the weights' dtype.

float32 products run as TF32 (``input_precision="tf32"``) unless torch's float32 matmul
precision is ``"highest"`` (then IEEE float32), as torch's own matmuls do; float64 in IEEE.
Accumulation is in float32 (float64 for float64 inputs).
"""

import torch
import triton
import triton.language as tl

from ._env import block_override as _block_override
from ._env import interpreter_blocks as _interpreter_blocks
from .mlp import _derivs, _scalars

__all__ = ["linear", "reverse_step", "adjoint_step", "down_step", "output_step", "weight_grad", "input_precision"]

_PRO_NONE, _PRO_SOFTPLUS, _PRO_SP1 = 0, 1, 2
_EPI_NONE, _EPI_ADJOINT, _EPI_DOWN = 0, 1, 2


@triton.jit
def _softplus(h, beta, threshold):
    """torch's softplus: h where beta h > threshold, else log1p(exp(beta h)) / beta, written
    as (max(x, 0) + log1p(exp(-|x|))) / beta with an accurate log1p (u = 1 + t:
    log(u) t / (u - 1), exact where u rounds to 1)."""
    x = h * beta
    t = tl.exp(tl.where(x < 0, x, -x))
    u = 1.0 + t
    exact = u == 1.0
    l1p = tl.where(exact, t, tl.log(u) * (t / tl.where(exact, 1.0, u - 1.0)))
    return tl.where(x > threshold, h, (tl.maximum(x, 0.0) + l1p) / beta)


@triton.jit
def _tile(scalars, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(beta, threshold, row block, its rows, its columns, row mask, column mask) of a
    program on the grid (column blocks, row blocks)."""
    beta = tl.load(scalars)
    threshold = tl.load(scalars + 1)
    pid_m = tl.program_id(1)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return beta, threshold, pid_m, rm, rn, rm < M, rn < N


@triton.jit
def _row_range(i, rows_per_program, M):
    """[r0, r1): the rows of the i-th program of those that take ``rows_per_program`` each."""
    r0 = i.to(tl.int64) * rows_per_program
    return r0, tl.minimum(r0 + rows_per_program, M)


@triton.jit
def _mm_kernel(
    a_ptr, a2_ptr, b_ptr, bias_ptr, out_ptr, e1_ptr, e2_ptr, out2_ptr, colsum_ptr, scalars,
    M, N, K,
    s_am, s_ak, s_a2m, s_bk, s_bn, s_om, s_e1m, s_e2m, s_o2m,
    PRO: tl.constexpr, EPI: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_E1: tl.constexpr,
    COLSUM: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[M, N] = P(a)[M, K] @ b[K, N] (+ bias), then the epilogue EPI.

    PRO: 0 a; 1 softplus(a); 2 a * s'(a2) (a may be one row: s_am = 0).
    Pre-activations (a with PRO 1, a2, e2) and gradient-pass vectors (a with PRO 2, e1 with
    EPI 1) may be float16 with float32 weights: loaded, then converted to the weights' dtype,
    in which everything is computed.
    EPI: 0 out <- acc; 1 (e1, e2) = (d, h) (d may be one row: s_e1m = 0): out <- acc s'(h),
    out2 <- acc d s'(h) q(h) = acc d s''(h); 2 e2 = h: out <- [e1 +] acc s'(h) (out may be e1).
    COLSUM (EPI 1, 2): colsum[pid_m, :] <- the row block's column sums of out (a bias
    gradient without another pass over out).
    Grid: (column blocks, row blocks), column blocks fastest, so that the programs sharing a
    row block's left operand run together (its second read comes from L2).
    """
    beta, threshold, pid_m, rm, rn, row_ok, col_ok = _tile(scalars, M, N, BLOCK_M, BLOCK_N)
    CT = b_ptr.dtype.element_ty  # compute dtype: the weights' (pre-activations may be float16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=CT)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        amask = row_ok[:, None] & k_ok[None, :]
        a = tl.load(a_ptr + rm[:, None] * s_am + rk[None, :] * s_ak, mask=amask, other=0.0).to(CT)
        # (masked-out entries of P(a) need not be 0: their columns meet b's zero rows,
        # their rows are not stored)
        if PRO == 1:
            a = _softplus(a, beta, threshold)
        elif PRO == 2:
            h2 = tl.load(a2_ptr + rm[:, None] * s_a2m + rk[None, :], mask=amask, other=0.0).to(CT)
            d1, _q = _derivs(h2, beta, threshold)
            a = a * d1
        b = tl.load(b_ptr + rk[:, None] * s_bk + rn[None, :] * s_bn, mask=k_ok[:, None] & col_ok[None, :],
                    other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    omask = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=col_ok, other=0.0)[None, :]
    o_off = rm[:, None] * s_om + rn[None, :]
    if EPI == 0:
        tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        h = tl.load(e2_ptr + rm[:, None] * s_e2m + rn[None, :], mask=omask, other=0.0).to(CT)
        d1, q = _derivs(h, beta, threshold)
        e1_off = rm[:, None] * s_e1m + rn[None, :]
        v = acc * d1
        if EPI == 1:
            d = tl.load(e1_ptr + e1_off, mask=omask, other=0.0).to(CT)
            tl.store(out2_ptr + rm[:, None] * s_o2m + rn[None, :], (v * d * q).to(out2_ptr.dtype.element_ty),
                     mask=omask)
        elif HAS_E1:
            v += tl.load(e1_ptr + e1_off, mask=omask, other=0.0)
        tl.store(out_ptr + o_off, v.to(out_ptr.dtype.element_ty), mask=omask)
        if COLSUM:
            tl.store(colsum_ptr + pid_m * N + rn, tl.sum(tl.where(omask, v, 0.0), axis=0), mask=col_ok)


def input_precision(dtype: torch.dtype) -> str:
    """``tf32`` for float32 unless torch's float32 matmul precision is ``highest``."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _blocks(N: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). Column blocks of up to 128 (a 256-wide layer
    is two programs per row block); tl.dot needs every block >= 16. Not tuned on a GPU
    yet: ``NPHT_MLP_MM_BLOCKS="BM,BN,BK,WARPS"`` overrides the float32 choice (BN is capped
    at the layer's width rounded up to a power of two) to try others without editing this."""
    bn_max = max(16, triton.next_power_of_2(N))
    bn = min(128, bn_max)
    if _interpreter_blocks():
        return 256, bn, 64, 4
    if dtype == torch.float64:
        return 32, min(bn, 64), 16, 4
    override = _block_override("NPHT_MLP_MM_BLOCKS", "BM,BN,BK,WARPS", (16, 16, 16, 1))
    if override:
        bm, bn_o, bk, warps = override
        return bm, min(bn_o, bn_max), bk, warps
    # 8 warps for a 64 x 128 tile: 32 of its elements per thread, so that the epilogues'
    # extra tiles (h, e or hadj, and s', q) fit in registers beside the accumulator (with 4
    # warps the adjoint and down epilogues spill 1-2 KiB per thread on sm_90; compiled with
    # 8: at most 209 registers, no spills, 72-88 KiB of shared memory on sm_80 and sm_90)
    return 64, bn, 32, 8 if bn >= 128 else 4


def _row(name, t, cols, dtype, device):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.device != device:
        raise TypeError(f"npht.kernels.mlp_mm: {name} must be a {dtype} tensor on {device}")
    if t.shape != (cols,) or (cols > 1 and t.stride(0) != 1):
        raise ValueError(f"npht.kernels.mlp_mm: {name} must be contiguous [{cols}], got {tuple(t.shape)}")


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _dtype_and_rows(ref_name, ref, name, t, half_ok):
    """(dtype, device) of tensor ``ref`` (float32/float64: the computation's), and the shape of
    the array ``t`` [M, W] checked against them."""
    if not isinstance(ref, torch.Tensor):
        raise TypeError(f"npht.kernels.mlp_mm: {ref_name} must be a torch.Tensor, got {type(ref).__name__}")
    if ref.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"npht.kernels.mlp_mm: float32 or float64 only, got {ref.dtype}")
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError(f"npht.kernels.mlp_mm: {name} must be [M, W], got {_shape(t)}")
    _rows(name, t, t.shape[0], t.shape[1], ref.dtype, ref.device, half_ok=half_ok)
    return ref.dtype, ref.device, tuple(t.shape)


def _rows(name, t, M, cols, dtype, device, half_ok=False):
    """Checks an array [M, cols]; ``half_ok`` (a pre-activation or gradient-pass vector):
    float16 is allowed beside float32."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"npht.kernels.mlp_mm: {name} must be a torch.Tensor, got {type(t).__name__}")
    half = half_ok and dtype == torch.float32 and t.dtype == torch.float16
    if (t.dtype != dtype and not half) or t.device != device:
        want = f"{dtype} (or float16)" if half_ok and dtype == torch.float32 else f"{dtype}"
        raise TypeError(f"npht.kernels.mlp_mm: {name} must be {want} on {device}, got {t.dtype} on {t.device}")
    if t.shape != (M, cols):
        raise ValueError(f"npht.kernels.mlp_mm: {name} must be [{M}, {cols}], got {tuple(t.shape)}")
    if cols > 1 and t.stride(1) != 1:
        raise ValueError(f"npht.kernels.mlp_mm: {name} must be contiguous in its last dim")


def _launch(a, a_bcast, w, w_transposed, *, beta, threshold, pro=_PRO_NONE, a2=None, bias=None,
            epi=_EPI_NONE, e1=None, e1_bcast=False, e2=None, out=None, out2=None, colsum=False, out_dtype=None,
            half_out=False):
    """out = P(a) @ B, B = w^T (w_transposed) or w; a is [M, K] or one row [K] (a_bcast), e1
    [M, N] or one row [N] (e1_bcast). With ``colsum`` (an epilogue): ``(out, out.sum(0))``,
    the sum from per-row-block partial sums written by the epilogue."""
    dtype, device = w.dtype, w.device
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"npht.kernels.mlp_mm: float32 or float64 only, got {dtype}")
    if w.dim() != 2:
        raise ValueError(f"npht.kernels.mlp_mm: w must be [out, in], got {tuple(w.shape)}")
    K, N = (w.shape[1], w.shape[0]) if w_transposed else (w.shape[0], w.shape[1])
    M = (a2 if a_bcast else a).shape[0]
    if a_bcast:
        _row("the broadcast row", a, K, dtype, device)
        s_am, s_ak = 0, a.stride(0)
    else:
        _rows("a", a, M, K, dtype, device, half_ok=pro in (_PRO_SOFTPLUS, _PRO_SP1))
        s_am, s_ak = a.stride(0), a.stride(1)
    if a2 is not None:
        _rows("h", a2, M, K, dtype, device, half_ok=True)
    if e1 is not None:
        if e1_bcast:
            _row("the broadcast row", e1, N, dtype, device)
        else:
            _rows("d" if epi == _EPI_ADJOINT else "hadj", e1, M, N, dtype, device, half_ok=epi == _EPI_ADJOINT)
    for name, t in (("h", e2), ("out", out), ("out2", out2)):
        if t is not None:
            # h, and the forward passes' outputs (``half_out``: the next pre-activation or d), may be float16
            _rows(name, t, M, N, dtype, device, half_ok=name == "h" or (name == "out" and half_out))
    if bias is not None:
        _row("bias", bias, N, dtype, device)  # read with unit stride
    if not (0 < beta < float("inf")):
        raise ValueError(f"npht.kernels.mlp_mm: beta must be finite and > 0, got {beta}")
    if out is None:
        out = torch.empty(M, N, dtype=out_dtype or dtype, device=device)
    if M == 0:
        return (out, out.new_zeros(N)) if colsum else out
    s_bk, s_bn = (w.stride(1), w.stride(0)) if w_transposed else (w.stride(0), w.stride(1))
    BM, BN, BK, warps = _blocks(N, dtype)
    scalars = _scalars(beta, threshold, dtype, device)
    dummy = out
    grid = (triton.cdiv(N, BN), triton.cdiv(M, BM))
    partial = torch.empty(grid[1], N, dtype=dtype, device=device) if colsum else dummy
    _mm_kernel[grid](
        a, a2 if a2 is not None else dummy, w, bias if bias is not None else dummy, out,
        e1 if e1 is not None else dummy, e2 if e2 is not None else dummy,
        out2 if out2 is not None else dummy, partial, scalars,
        M, N, K,
        s_am, s_ak, a2.stride(0) if a2 is not None else 0, s_bk, s_bn, out.stride(0),
        0 if (e1 is None or e1_bcast) else e1.stride(0), e2.stride(0) if e2 is not None else 0,
        out2.stride(0) if out2 is not None else 0,
        PRO=pro, EPI=epi, HAS_BIAS=bias is not None, HAS_E1=e1 is not None,
        COLSUM=colsum, PREC=input_precision(dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, num_warps=warps,
    )
    return (out, partial.sum(0)) if colsum else out


def _check_out_dtype(out_dtype, w):
    if out_dtype not in (None, w.dtype) and not (out_dtype == torch.float16 and w.dtype == torch.float32):
        raise TypeError(f"npht.kernels.mlp_mm: out_dtype must be the weights' {w.dtype} or float16 (with float32 "
                        f"weights), got {out_dtype}")


def linear(a, w, bias=None, *, softplus_input=False, beta=100.0, threshold=20.0, out=None, out_dtype=None):
    """``P(a) w^T + bias``; ``P = softplus(beta, threshold)`` with ``softplus_input``. With
    float32 weights, ``a`` (when softplus_input: a pre-activation) and the result (``out``,
    or ``out_dtype``) may be float16: computed in float32, stored rounded."""
    _check_out_dtype(out_dtype, w)
    return _launch(a, False, w, True, beta=beta, threshold=threshold,
                   pro=_PRO_SOFTPLUS if softplus_input else _PRO_NONE, bias=bias, out=out, out_dtype=out_dtype,
                   half_out=True)


def reverse_step(d, h, w, *, beta=100.0, threshold=20.0, out=None, out_dtype=None):
    """``(d * s'(h)) w`` for ``d`` ``[M, out]`` or one row ``[out]`` (into ``out`` when given).
    With float32 weights, ``d``, ``h`` and the result (``out``, or ``out_dtype``: the next
    gradient-pass vector) may be float16: computed in float32, stored rounded."""
    _check_out_dtype(out_dtype, w)
    return _launch(d, d.dim() == 1, w, False, beta=beta, threshold=threshold, pro=_PRO_SP1, a2=h, out=out,
                   out_dtype=out_dtype, half_out=True)


def adjoint_step(dbar, w, d, h, *, beta=100.0, threshold=20.0, colsum=False):
    """``ebar = dbar w^T`` -> ``(ebar s'(h), ebar d s''(h))`` (the next ``dbar`` and the
    adjoint's contribution to ``hbar``), plus the first's column sums with ``colsum``;
    ``d`` ``[M, out]`` (float16 allowed, as ``h``) or one row ``[out]``."""
    if d is None or h is None:
        raise ValueError("npht.kernels.mlp_mm.adjoint_step: d and h are required")
    hadj = torch.empty(h.shape, dtype=w.dtype, device=h.device)  # h may be float16, hadj is not
    res = _launch(dbar, False, w, True, beta=beta, threshold=threshold, epi=_EPI_ADJOINT, e1=d,
                  e1_bcast=d.dim() == 1, e2=h, out2=hadj, colsum=colsum)
    return (res[0], hadj, res[1]) if colsum else (res, hadj)


def down_step(hbar, w, h, hadj=None, *, beta=100.0, threshold=20.0, colsum=False):
    """``abar = hbar w``; returns ``hadj + abar s'(h)`` (in ``hadj``'s buffer when given; and
    its column sums with ``colsum``)."""
    if h is None:
        raise ValueError("npht.kernels.mlp_mm.down_step: h is required")
    return _launch(hbar, False, w, False, beta=beta, threshold=threshold, epi=_EPI_DOWN, e1=hadj, e2=h,
                   out=hadj, colsum=colsum)


@triton.jit
def _output_kernel(h_ptr, gy_ptr, w_ptr, hbar_ptr, hsum_ptr, gwsum_ptr, scalars, M, N, s_hm, s_bm, rows_per_prog,
                   HAS_ADJ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The output layer's backward for the rows: hbar <- [hbar +] gy w s'(h); per program (a
    column block and ``rows_per_prog`` rows, BLOCK_M at a time) the column sums of hbar and
    of gy s(h) (the bias and weight gradients)."""
    beta = tl.load(scalars)
    threshold = tl.load(scalars + 1)
    pid_p = tl.program_id(1)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = rn < N
    w = tl.load(w_ptr + rn, mask=col_ok, other=0.0)
    CT = w_ptr.dtype.element_ty  # h may be float16
    hsum = tl.zeros((BLOCK_N,), dtype=CT)
    gwsum = tl.zeros((BLOCK_N,), dtype=CT)
    r0, r1 = _row_range(pid_p, rows_per_prog, M)
    for m0 in range(r0, r1, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        row_ok = rm < r1
        mask = row_ok[:, None] & col_ok[None, :]
        h = tl.load(h_ptr + rm[:, None] * s_hm + rn[None, :], mask=mask, other=0.0).to(CT)
        gy = tl.load(gy_ptr + rm, mask=row_ok, other=0.0)
        d1, _q = _derivs(h, beta, threshold)
        v = gy[:, None] * w[None, :] * d1
        b_off = rm[:, None] * s_bm + rn[None, :]
        if HAS_ADJ:
            v += tl.load(hbar_ptr + b_off, mask=mask, other=0.0)
        tl.store(hbar_ptr + b_off, v.to(hbar_ptr.dtype.element_ty), mask=mask)
        hsum += tl.sum(tl.where(mask, v, 0.0), axis=0)
        gwsum += tl.sum(tl.where(mask, gy[:, None] * _softplus(h, beta, threshold), 0.0), axis=0)
    tl.store(hsum_ptr + pid_p * N + rn, hsum, mask=col_ok)
    tl.store(gwsum_ptr + pid_p * N + rn, gwsum, mask=col_ok)


def output_step(h, gy, w_out, hadj=None, *, beta=100.0, threshold=20.0):
    """The output layer ``y = s(h) w_out + b`` backward for upstream ``gy [M]``:
    ``(hbar, hbar.sum(0), gy s(h) summed over rows)`` with ``hbar = [hadj +] gy w_out s'(h)``
    (in ``hadj``'s buffer when given): one pass over ``h`` (and ``hadj``) where torch's ops
    make about eight."""
    dtype, device, (M, N) = _dtype_and_rows("w_out", w_out, "h", h, True)
    if hadj is not None:
        _rows("hadj", hadj, M, N, dtype, device)
    _row("gy", gy, M, dtype, device)
    _row("w_out", w_out, N, dtype, device)
    if not (0 < beta < float("inf")):
        raise ValueError(f"npht.kernels.mlp_mm: beta must be finite and > 0, got {beta}")
    hbar = hadj if hadj is not None else torch.empty(M, N, dtype=dtype, device=device)
    if M == 0:
        return hbar, w_out.new_zeros(N), w_out.new_zeros(N)
    BM, BN, _, warps = _blocks(N, dtype)
    # half the products' rows per step (an elementwise kernel: fewer live registers; 64 rows
    # spilled on sm_80), eight steps per program (fewer partial column sums)
    BM = max(16, BM // 2) if not _interpreter_blocks() else BM
    rows = 8 * BM
    grid = (triton.cdiv(N, BN), triton.cdiv(M, rows))
    hsum = torch.empty(grid[1], N, dtype=dtype, device=device)
    gwsum = torch.empty(grid[1], N, dtype=dtype, device=device)
    _output_kernel[grid](h, gy, w_out, hbar, hsum, gwsum, _scalars(beta, threshold, dtype, device),
                         M, N, h.stride(0), hbar.stride(0), rows, HAS_ADJ=hadj is not None, BLOCK_M=BM,
                         BLOCK_N=BN, num_warps=warps)
    return hbar, hsum.sum(0), gwsum.sum(0)


@triton.jit
def _wgrad_kernel(a_ptr, a2_ptr, b_ptr, part_ptr, scalars, M, N, K, rows_per_split, s_am, s_a2m, s_bm,
                  PRO_A: tl.constexpr, PRO_B: tl.constexpr, PREC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """part[split, N, K] = sum over the split's rows of P(a)[m, n] Q(b)[m, k]: a weight
    gradient reduced over rows. PRO_A: 0 a; 2 a * s'(a2) (a may be one row, s_am = 0).
    PRO_B: 0 b; 1 softplus(b). Grid: (column tiles of the result, row splits), the tiles of
    one split adjacent (their operand rows come from L2 after the first read)."""
    beta = tl.load(scalars)
    threshold = tl.load(scalars + 1)
    pid_t = tl.program_id(0)
    split = tl.program_id(1)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_n = pid_t // num_k
    pid_k = pid_t % num_k
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_ok = rn < N
    k_ok = rk < K
    CT = part_ptr.dtype.element_ty  # compute dtype (a2, or b with PRO_B 1, may be float16)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=CT)
    r0, r1 = _row_range(split, rows_per_split, M)
    for m0 in range(r0, r1, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        row_ok = rm < r1
        amask = row_ok[:, None] & n_ok[None, :]
        # masked rows load as 0 in a (so P(a) is 0 there), whatever Q(b) is
        a = tl.load(a_ptr + rm[:, None] * s_am + rn[None, :], mask=amask, other=0.0).to(CT)
        if PRO_A == 2:
            h2 = tl.load(a2_ptr + rm[:, None] * s_a2m + rn[None, :], mask=amask, other=0.0).to(CT)
            d1, _q = _derivs(h2, beta, threshold)
            a = a * d1
        b = tl.load(b_ptr + rm[:, None] * s_bm + rk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0).to(CT)
        if PRO_B == 1:
            b = _softplus(b, beta, threshold)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=PREC)
    tl.store(part_ptr + split * N * K + rn[:, None] * K + rk[None, :], acc, mask=n_ok[:, None] & k_ok[None, :])


def _wgrad_blocks(dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, row splits) of weight_grad; not tuned on a GPU
    yet: ``NPHT_MLP_WGRAD_BLOCKS="BM,BN,BK,WARPS,SPLITS"`` overrides the float32 choice."""
    if _interpreter_blocks():
        return 256, 128, 128, 4, 4
    if dtype == torch.float64:
        return 32, 32, 32, 4, 128
    override = _block_override("NPHT_MLP_WGRAD_BLOCKS", "BM,BN,BK,WARPS,SPLITS", (16, 16, 16, 1, 1))
    if override:
        return override
    # 64 x 64 tiles, 8 warps: with the s'(h) prologue (a third tile per stage) 115 KiB of
    # shared memory and no spilled registers on sm_80 and sm_90 (tools/triton_check.py
    # prints both); 64 x 128 x 64 needed 192 KiB there (over an A100's 163) and spilled
    return 64, 64, 64, 8, 64


def weight_grad(a, b, *, a_h=None, b_softplus=False, beta=100.0, threshold=20.0, out=None):
    """``P(a)^T Q(b)`` summed over rows -> ``[N, K]`` (added into ``out`` when given), for
    ``a [M, N]`` (or one row ``[N]`` broadcast, with ``a_h``), ``b [M, K]``:
    ``P(a) = a * s'(a_h)`` with ``a_h``, ``Q(b) = softplus(b)`` with ``b_softplus``. A weight
    gradient without the product's left or right factor written out first (e.g.
    ``gW_l += (d_l s'(h_l))^T dbar`` or ``hbar^T s(h_{l-1})``). Deterministic: per-split
    partial sums, then their sum."""
    # the computation's dtype is a's (out's when a is a float16 gradient-pass vector); b (with
    # b_softplus), a_h, and a with a_h may be float16
    half_a = isinstance(a, torch.Tensor) and a.dtype == torch.float16
    if half_a and out is None:
        raise TypeError("npht.kernels.mlp_mm.weight_grad: a float16 `a` needs `out` (float32) for the result's dtype")
    dtype, device, (M, K) = _dtype_and_rows("out" if half_a else "a", out if half_a else a, "b", b, b_softplus)
    if a.dim() == 1:
        if a_h is None:
            raise ValueError("npht.kernels.mlp_mm.weight_grad: a broadcast row needs a_h (its rows' factor)")
        N = a.shape[0]
        _row("the broadcast row", a, N, dtype, device)
        s_am = 0
    else:
        N = a.shape[1] if a.dim() == 2 else -1
        _rows("a", a, M, N, dtype, device, half_ok=a_h is not None)
        s_am = a.stride(0)
    if a_h is not None:
        _rows("a_h", a_h, M, N, dtype, device, half_ok=True)
    if not (0 < beta < float("inf")):
        raise ValueError(f"npht.kernels.mlp_mm: beta must be finite and > 0, got {beta}")
    if out is not None and (out.shape != (N, K) or out.dtype != dtype or out.device != device):
        raise ValueError(f"npht.kernels.mlp_mm: out must be a {dtype} [{N}, {K}] tensor on {device}")
    if M == 0:
        res = torch.zeros(N, K, dtype=dtype, device=device)
        return res if out is None else out
    BM, BN, BK, warps, splits = _wgrad_blocks(dtype)
    BN = min(BN, max(16, triton.next_power_of_2(N)))
    BK = min(BK, max(16, triton.next_power_of_2(K)))
    row_blocks = triton.cdiv(M, BM)
    per_split = triton.cdiv(row_blocks, min(splits, row_blocks)) * BM
    n_splits = triton.cdiv(M, per_split)
    part = torch.empty(n_splits, N, K, dtype=dtype, device=device)
    grid = (triton.cdiv(N, BN) * triton.cdiv(K, BK), n_splits)
    _wgrad_kernel[grid](a, a_h if a_h is not None else b, b, part, _scalars(beta, threshold, dtype, device),
                        M, N, K, per_split, s_am, a_h.stride(0) if a_h is not None else 0, b.stride(0),
                        PRO_A=2 if a_h is not None else 0, PRO_B=1 if b_softplus else 0,
                        PREC=input_precision(dtype), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, num_warps=warps)
    res = part.sum(0)
    return res if out is None else out.add_(res)

