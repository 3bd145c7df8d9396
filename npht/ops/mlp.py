"""``npht.softplus_mlp_with_grad``: value **and input gradient** of a softplus MLP scalar
field (an SDF decoder), with the derivative of both written out by hand.

Eikonal and normal losses need ``g = dy/dx`` and then the gradient of a loss on ``g``
w.r.t. the MLP's weights and inputs: a double backward. Autograd builds it from the
graph of the first backward, keeping every intermediate of both passes alive (about three
dozen ``[M, width]`` tensors for the thesis decoder) and running one elementwise kernel
per node. Here the three passes are explicit:

- forward: ``h_l = a_{l-1} W_l^T + b_l``, ``a_l = softplus(h_l)``, ``y = a_{L-1} W_L^T + b_L``;
- input gradient (reverse mode): ``d_{L-1} = W_L``, ``e_l = d_l * s'(h_l)``,
  ``d_{l-1} = e_l W_l``, ``g = d_0``;
- backward of a loss on ``(y, g)``: a sweep up the layers for the adjoint of the reverse
  pass (``ebar_l = dbar_{l-1} W_l^T``, ``dbar_l = ebar_l * s'(h_l)``, a contribution
  ``ebar_l * d_l * s''(h_l)`` to ``hbar_l``), then a sweep down for the adjoint of the
  forward pass. Weight gradients of both passes are accumulated with ``addmm_``.

Only the pre-activations ``h_l`` are kept (one ``[M, width]`` tensor per hidden layer),
or nothing at all with ``checkpoint=True``. The backward runs in chunks of ``chunk_size``
rows: it recomputes the chunk's reverse-pass products ``e_l = d_l s'(h_l)`` (and with
``checkpoint`` its pre-activations), so its working memory is a few chunk-sized
temporaries whatever the number of points.

Per hidden layer the math needs six GEMMs (forward, reverse, and four in the backward);
the chunked backward adds one (the reverse pass again), ``checkpoint`` one more. In
float32 the time is bounded by these GEMMs; the win over autograd is the memory and the
elementwise work. The backward's elementwise steps run as two fused kernels per layer
(``backend``: cpu, cuda, triton; csrc/include/npht/softplus_math.h): the sweep up's
``(hbar_l, dbar_l) = (ebar_l d_l s''(h_l), ebar_l s'(h_l))``, written as
``(ebar_l e_l q(h_l), ebar_l s'(h_l))`` with ``q = s''/s' = beta (1 - sigmoid(beta h))``
so that it needs ``e_l`` only (kept from the recompute for the weight gradient anyway),
from one exponential, in place (three arrays read, two written, where the PyTorch sequence
makes about twenty passes), and the sweep down's ``hbar_l += abar_l s'(h_l)``.
``softplus`` follows ``F.softplus(h, beta, threshold)`` exactly, including its linear
branch above ``threshold`` (first derivative 1, second derivative 0 there).

Registered with torch.library: ``npht::softplus_mlp_grad`` (forward, its autograd is
``npht::softplus_mlp_grad_backward``). A third derivative is not supported.
"""

from __future__ import annotations

import functools
import numbers
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ._backend import kernels, resolve_backend

__all__ = ["softplus_mlp_with_grad"]

DEFAULT_CHUNK = 1 << 18


def _sp1(g: torch.Tensor, h: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """``g * softplus'(h)``: torch's own softplus backward kernel (one pass; derivative 1
    on the linear branch ``beta * h > threshold``)."""
    return torch.ops.aten.softplus_backward(g, h, beta, threshold)


def _reverse(hs, weights, beta, threshold):
    """Reverse pass over the rows of hs: ``g = d_{-1}``."""
    d = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    for l in range(len(weights) - 2, -1, -1):
        d = _sp1(d, hs[l], beta, threshold) @ weights[l]
    return d


def _reverse_kept(hs, weights, beta, threshold):
    """The reverse pass again, for the backward: ``es[l] = e_l = d_l s'(h_l)`` for
    l = 0 .. L-2 (the weight gradients' left factors, then the adjoint kernel's input);
    the ``d_l`` are dropped as it goes, and ``g`` itself is not computed."""
    d = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    es = []
    for l in range(len(weights) - 2, -1, -1):
        e = _sp1(d, hs[l], beta, threshold)
        es.append(e)
        if l > 0:
            d = e @ weights[l]
    es.reverse()
    return es


def _forward_rows(x, weights, biases, beta, threshold, h_out=None):
    """Rows of x -> (y [rows], g [rows, D0], hs); the pre-activations are written into
    ``h_out`` (row slices of the saved buffers) when given."""
    hs = []
    a = x
    for l in range(len(weights) - 1):
        if h_out is None:
            h = torch.addmm(biases[l], a, weights[l].t())
        else:
            h = torch.addmm(biases[l], a, weights[l].t(), out=h_out[l])
        hs.append(h)
        a = F.softplus(h, beta, threshold)
    y = torch.addmm(biases[-1], a, weights[-1].t()).squeeze(-1)
    del a
    g = _reverse(hs, weights, beta, threshold)
    return y, g, hs


def _backward_rows(gy, gg, x, weights, hs, beta, threshold, gW, gb, need_x, k):
    """Accumulate the rows' weight/bias gradients into gW, gb; return grad_x (or None).
    ``k``: the module of the elementwise kernels (npht_C, npht.kernels.mlp or the
    reference). Working memory: the rows' reverse-pass vectors (recomputed, then overwritten
    in place by the adjoint contributions) and a few temporaries of the rows' size."""
    L = len(weights)
    w_out = weights[-1][0]
    h_adj: List[Optional[torch.Tensor]] = [None] * (L - 1)
    if gg is not None:  # sweep up: adjoint of the reverse pass
        es = _reverse_kept(hs, weights, beta, threshold)
        dbar = gg
        for l in range(L - 1):
            if gW is not None:
                gW[l].addmm_(es[l].t(), dbar)
            ebar = dbar @ weights[l].t()
            del dbar
            # in place: h_adj = ebar * d_l * s''(h_l) = ebar * e_l * s''/s' (into e_l's
            # buffer), ebar <- ebar * s'(h_l)
            e_l, es[l] = es[l], None
            k.softplus_adjoint_(ebar, e_l, hs[l], beta, threshold)
            h_adj[l], dbar = e_l, ebar
            del e_l, ebar
        if gW is not None:
            gW[-1][0].add_(dbar.sum(0))
        del dbar, es
    abar = None
    if gy is not None:  # output layer
        if gW is not None:
            gW[-1].addmm_(gy[None, :], F.softplus(hs[-1], beta, threshold))
            gb[-1].add_(gy.sum())
        abar = torch.outer(gy, w_out)
    for l in range(L - 2, -1, -1):  # sweep down: adjoint of the forward pass
        if abar is None:
            hbar = h_adj[l]
        elif h_adj[l] is None:
            hbar = _sp1(abar, hs[l], beta, threshold)
        else:  # hbar = h_adj + abar * s'(h_l), in h_adj's buffer
            hbar = h_adj[l]
            k.softplus_backward_add_(hbar, abar, hs[l], beta, threshold)
        del abar
        h_adj[l] = None
        if gW is not None:
            a_prev = x if l == 0 else F.softplus(hs[l - 1], beta, threshold)
            gW[l].addmm_(hbar.t(), a_prev)
            gb[l].add_(hbar.sum(0))
            del a_prev
        abar = hbar @ weights[l] if (l > 0 or need_x) else None
        del hbar
    return abar


# ---- the same passes with Triton products (matmul="triton") ----------------------------
# kernels/mlp_mm.py fuses the elementwise steps into the products' prologues and epilogues:
# per hidden layer 23 passes over [rows, width] arrays instead of 34 (forward 5, sweep up
# 11, sweep down 7, the bias gradients summed in the epilogues), and 3 instead of about 9
# for the output layer's backward; the weight gradients stay torch's (cuBLAS) products.


def _forward_rows_tmm(x, weights, biases, beta, threshold, h_out=None, *, mm):
    """:func:`_forward_rows` with Triton products: ``h_l = s(h_{l-1}) W_l^T + b_l`` (the
    softplus in the product's prologue), ``d_{l-1} = (d_l s'(h_l)) W_l`` likewise."""
    hs = []
    a, softplus_input = x, False
    for l in range(len(weights) - 1):
        h = mm.linear(a, weights[l], biases[l], softplus_input=softplus_input, beta=beta, threshold=threshold,
                      out=None if h_out is None else h_out[l])
        hs.append(h)
        a, softplus_input = h, True
    y = mm.linear(a, weights[-1], biases[-1], softplus_input=True, beta=beta, threshold=threshold).squeeze(-1)
    d = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    for l in range(len(weights) - 2, -1, -1):
        d = mm.reverse_step(d, hs[l], weights[l], beta=beta, threshold=threshold)
    return y, d, hs


def _backward_rows_tmm(gy, gg, x, weights, hs, beta, threshold, gW, gb, need_x, *, k, mm):
    """:func:`_backward_rows` with Triton products. Sweep up: the reverse pass again, keeping
    ``e_l`` (written by the product's prologue), then per layer ``gW_l += e_l^T dbar`` and
    one product ``ebar = dbar W_l^T`` whose epilogue turns ``e_l`` into ``hbar``'s adjoint
    contribution and returns ``dbar_l = ebar s'(h_l)``. Output layer: one elementwise kernel
    (``hbar += gy w_out s'(h)``, with the column sums for its weight and bias gradients).
    Sweep down: one product ``abar = hbar_l W_l`` whose epilogue adds ``abar s'(h_{l-1})``
    into the contribution (the layer below's ``hbar``, with its column sums: the bias
    gradient) and writes ``a_{l-1} = s(h_{l-1})`` for the weight gradient."""
    L = len(weights)
    w_out = weights[-1][0]
    sc = {"beta": beta, "threshold": threshold}
    need_params = gW is not None
    h_adj: List[Optional[torch.Tensor]] = [None] * (L - 1)
    if gg is not None:  # sweep up: adjoint of the reverse pass
        es: List[Optional[torch.Tensor]] = [None] * (L - 1)
        d = w_out
        for l in range(L - 2, 0, -1):
            es[l] = torch.empty_like(hs[l])
            d = mm.reverse_step(d, hs[l], weights[l], e_out=es[l], **sc)
        es[0] = _sp1(d, hs[0], beta, threshold)
        del d
        dbar = gg
        for l in range(L - 1):
            if need_params:
                gW[l].addmm_(es[l].t(), dbar)
            last = l == L - 2
            # es[l] <- hbar_l's contribution; the last dbar's column sums: W_L's gradient
            res = mm.adjoint_step(dbar, weights[l], es[l], hs[l], colsum=last and need_params, **sc)
            if last and need_params:
                dbar, dsum = res
                gW[-1][0].add_(dsum)
            else:
                dbar = res
            h_adj[l], es[l] = es[l], None
        del dbar, es
    hbar, hbar_sum = h_adj[-1], None
    if gy is not None:  # output layer
        hbar, hbar_sum, gw_out = mm.output_step(hs[-1], gy, w_out, hbar, **sc)
        if need_params:
            gW[-1][0].add_(gw_out)
            gb[-1].add_(gy.sum())
    h_adj[-1] = None
    for l in range(L - 2, -1, -1):  # sweep down: hbar = hbar_l
        prev_sum = None
        if l > 0:
            a_prev = torch.empty_like(hs[l - 1]) if need_params else None
            res = mm.down_step(hbar, weights[l], hs[l - 1], h_adj[l - 1], a_out=a_prev, colsum=need_params, **sc)
            hbar_prev, prev_sum = res if need_params else (res, None)
            h_adj[l - 1] = None
        else:
            a_prev = x
            hbar_prev = hbar @ weights[0] if need_x else None
        if need_params:
            gW[l].addmm_(hbar.t(), a_prev)
            gb[l].add_(hbar.sum(0) if hbar_sum is None else hbar_sum)
        del a_prev
        hbar, hbar_sum = hbar_prev, prev_sum
    return hbar


# ---- registered ops ---------------------------------------------------------------------


@torch.library.custom_op("npht::softplus_mlp_grad", mutates_args=())
def _mlp_grad_op(
    x: torch.Tensor,
    weights: List[torch.Tensor],
    biases: List[torch.Tensor],
    beta: float,
    threshold: float,
    save: bool,
    chunk: int,
    backend: str,
    matmul: str,
) -> tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
    M = x.shape[0]
    hs = [x.new_empty(M, w.shape[0]) for w in weights[:-1]] if save else []
    rows = _forward_rows if matmul == "torch" else functools.partial(_forward_rows_tmm, mm=kernels("triton", "mlp_mm"))
    if M <= chunk:
        y, g, _ = rows(x, weights, biases, beta, threshold, hs or None)
        return y, g, hs
    y = x.new_empty(M)
    g = torch.empty_like(x)
    for r0 in range(0, M, chunk):
        r1 = min(M, r0 + chunk)
        h_out = [h[r0:r1] for h in hs] if save else None
        y[r0:r1], g[r0:r1], _ = rows(x[r0:r1], weights, biases, beta, threshold, h_out)
    return y, g, hs


@_mlp_grad_op.register_fake
def _(x, weights, biases, beta, threshold, save, chunk, backend, matmul):
    M = x.shape[0]
    hs = [x.new_empty(M, w.shape[0]) for w in weights[:-1]] if save else []
    return x.new_empty(M), x.new_empty(x.shape), hs


@torch.library.custom_op("npht::softplus_mlp_grad_backward", mutates_args=())
def _mlp_grad_backward_op(
    grad_y: Optional[torch.Tensor],
    grad_g: Optional[torch.Tensor],
    x: torch.Tensor,
    weights: List[torch.Tensor],
    biases: List[torch.Tensor],
    hs: List[torch.Tensor],
    beta: float,
    threshold: float,
    chunk: int,
    need_x: bool,
    need_params: bool,
    backend: str,
    matmul: str,
) -> tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    M = x.shape[0]
    k = kernels(backend, "mlp")
    if matmul == "torch":
        rows_fwd, rows_bwd = _forward_rows, functools.partial(_backward_rows, k=k)
    else:
        mm = kernels("triton", "mlp_mm")
        rows_fwd = functools.partial(_forward_rows_tmm, mm=mm)
        rows_bwd = functools.partial(_backward_rows_tmm, k=k, mm=mm)
    gW = [torch.zeros_like(w) for w in weights] if need_params else None
    gb = [torch.zeros_like(b) for b in biases] if need_params else None
    gx = torch.zeros_like(x) if need_x else x.new_empty(0)
    if M > 0 and (grad_y is not None or grad_g is not None):
        for r0 in range(0, M, chunk):
            r1 = min(M, r0 + chunk)
            xr = x[r0:r1]
            if hs:
                hr = [h[r0:r1] for h in hs]
            else:  # checkpoint: recompute the rows' pre-activations
                _, _, hr = rows_fwd(xr, weights, biases, beta, threshold)
            gyr = None if grad_y is None else grad_y[r0:r1]
            ggr = None if grad_g is None else grad_g[r0:r1]
            gxr = rows_bwd(gyr, ggr, xr, weights, hr, beta, threshold, gW, gb, need_x)
            if need_x:
                gx[r0:r1] = gxr
            del hr, gxr
    if not need_params:
        gW, gb = [w.new_empty(0) for w in weights], [b.new_empty(0) for b in biases]
    return gx, gW, gb


@_mlp_grad_backward_op.register_fake
def _(grad_y, grad_g, x, weights, biases, hs, beta, threshold, chunk, need_x, need_params, backend, matmul):
    gx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    if need_params:
        return gx, [w.new_empty(w.shape) for w in weights], [b.new_empty(b.shape) for b in biases]
    return gx, [w.new_empty(0) for w in weights], [b.new_empty(0) for b in biases]


def _setup_context(ctx, inputs, output):
    x, weights, biases, beta, threshold, save, chunk, backend, matmul = inputs
    _, _, hs = output
    ctx.save_for_backward(x, *weights, *biases, *hs)
    # hs are saved state, not results: no gradient flows into them, and none must be
    # materialised (zero-filled [M, width] tensors, one per hidden layer, would double
    # the op's memory); an unused y or g then arrives as None too.
    ctx.mark_non_differentiable(*hs)
    ctx.set_materialize_grads(False)
    ctx.n_layers = len(weights)
    ctx.args = (float(beta), float(threshold), int(chunk))
    ctx.need_x = x.requires_grad
    ctx.need_params = any(t.requires_grad for t in (*weights, *biases))
    ctx.backend = backend
    ctx.matmul = matmul


def _usable(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _backward(ctx, grad_y, grad_g, _grad_hs):
    L = ctx.n_layers
    x, *rest = ctx.saved_tensors
    weights, biases, hs = list(rest[:L]), list(rest[L:2 * L]), list(rest[2 * L:])
    gx, gW, gb = torch.ops.npht.softplus_mlp_grad_backward(
        _usable(grad_y), _usable(grad_g), x, weights, biases, hs, *ctx.args,
        ctx.need_x, ctx.need_params, ctx.backend, ctx.matmul,
    )
    gx = gx if ctx.need_x else None
    if not ctx.need_params:  # list inputs take a list of Nones
        gW, gb = [None] * L, [None] * L
    return gx, gW, gb, None, None, None, None, None, None


_mlp_grad_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function --------------------------------------------------------------------


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


KERNEL_DTYPES = (torch.float32, torch.float64)


def _resolve(backend: str, x: torch.Tensor) -> str:
    """The backend of the backward's elementwise kernels: ``auto`` picks as the other ops do
    (cuda > triton > reference on a GPU, cpu on the CPU) and falls back to the reference for
    dtypes the kernels do not take; a backend named explicitly must take x's dtype."""
    resolved = resolve_backend(backend, x.device)
    if resolved != "reference" and x.dtype not in KERNEL_DTYPES:
        if backend != "auto":
            raise TypeError(f"backend={backend!r} runs float32 and float64 MLPs, got {x.dtype}; "
                            "use backend='reference' (or 'auto', which falls back to it)")
        resolved = "reference"
    return resolved


MATMULS = ("torch", "triton")


def _resolve_matmul(matmul: str, x: torch.Tensor) -> str:
    """``matmul="triton"`` needs triton, float32/float64, and CUDA tensors (or the
    interpreter on the CPU)."""
    if not isinstance(matmul, str) or matmul not in MATMULS:
        raise ValueError(f"matmul must be one of {MATMULS}, got {matmul!r}")
    if matmul == "triton":
        resolve_backend("triton", x.device)  # raises if triton cannot run on x's device
        if x.dtype not in KERNEL_DTYPES:
            raise TypeError(f"matmul='triton' runs float32 and float64 MLPs, got {x.dtype}; use matmul='torch'")
        kernels("triton", "mlp_mm")  # raises BackendUnavailableError if it does not import
    return matmul


def _check(x, weights, biases, beta, threshold, chunk_size):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"x must be [..., D], got a 0-d tensor")
    weights, biases = list(weights), list(biases)
    if len(weights) < 2:
        raise ValueError(f"weights must hold at least 2 layers (one softplus), got {len(weights)}")
    if len(biases) != len(weights):
        raise ValueError(f"biases must match weights: got {len(biases)} biases for {len(weights)} weights")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    fan_in = x.shape[-1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        for name, t in ((f"weights[{i}]", w), (f"biases[{i}]", b)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != x.dtype:
                raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
            if t.device != x.device:
                raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
        if w.dim() != 2 or w.shape[1] != fan_in:
            raise ValueError(
                f"weights[{i}] must be [out, {fan_in}] (nn.Linear layout, fan-in = the previous "
                f"layer's width), got {tuple(w.shape)}"
            )
        if b.shape != (w.shape[0],):
            raise ValueError(f"biases[{i}] must be [{w.shape[0]}], got {tuple(b.shape)}")
        fan_in = w.shape[0]
    if fan_in != 1:
        raise ValueError(f"the last layer must have one output (a scalar field), got {fan_in}")
    if not (_is_real(beta) and 0 < beta < float("inf")):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    if not (_is_real(threshold) and threshold == threshold):
        raise ValueError(f"threshold must be a real number (not NaN), got {threshold!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return weights, biases


def softplus_mlp_with_grad(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    *,
    beta: float = 100.0,
    threshold: float = 20.0,
    checkpoint: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    backend: str = "auto",
    matmul: str = "torch",
):
    """Value and input gradient of a softplus MLP with one output.

    Args:
        x: ``[..., D0]`` inputs (e.g. tri-plane features concatenated with the point).
        weights, biases: the layers in ``nn.Linear`` layout (``[out, in]``, ``[out]``); the
            last has one output. softplus(beta, threshold) between layers, as
            ``nn.Softplus(beta, threshold)``.
        checkpoint: keep nothing for the backward and recompute it in chunks of
            ``chunk_size`` rows (memory independent of the number of points). Also used
            whenever grad mode is off.
        backend: the elementwise kernels of the backward (the softplus derivatives fused
            into one pass per layer and sweep): ``"auto"`` (cuda, else triton on a GPU;
            cpu on the CPU; float16/bfloat16 take the reference), ``"cuda"``,
            ``"triton"``, ``"cpu"`` (float32/float64) or ``"reference"`` (PyTorch ops).
        matmul: the matrix products: ``"torch"`` (torch.matmul, cuBLAS on a GPU) or
            ``"triton"`` (kernels/mlp_mm.py: the elementwise steps fused into the products'
            prologues and epilogues, 23 passes over ``[rows, width]`` arrays per
            hidden layer instead of 34; GPU, or the interpreter on the CPU; float32/float64).
            Both follow torch's float32 matmul precision (TF32 unless it is ``"highest"``);
            ``"triton"`` is meant for TF32, where the products are memory-bound (in IEEE
            float32 they are compute-bound, and torch's are the better choice).

    Returns:
        ``(y [...], dy_dx [..., D0])``, both differentiable (once) w.r.t. ``x``, the
        weights and the biases: a loss on ``dy_dx`` (eikonal, normals) backpropagates
        into all of them. Matches :func:`npht.reference.softplus_mlp_with_grad`.
    """
    weights, biases = _check(x, weights, biases, beta, threshold, chunk_size)
    backend = _resolve(backend, x)
    matmul = _resolve_matmul(matmul, x)
    lead, D0 = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, D0).contiguous()
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in (*weights, *biases))
    )
    y, g, _ = torch.ops.npht.softplus_mlp_grad(
        x2, weights, biases, float(beta), float(threshold), needs_grad and not checkpoint,
        int(chunk_size), backend, matmul,
    )
    return y.reshape(lead), g.reshape(*lead, D0)
