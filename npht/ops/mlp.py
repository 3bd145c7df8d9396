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
rows: it recomputes the chunk's reverse-pass vectors ``d_l`` (and with ``checkpoint``
its pre-activations), so its working memory is a few chunk-sized temporaries whatever
the number of points.

Per hidden layer the math needs six GEMMs (forward, reverse, and four in the backward);
the chunked backward adds one (the reverse pass again), ``checkpoint`` one more. In
float32 the time is bounded by these GEMMs; the win over autograd is the memory and the
elementwise work. ``softplus`` follows
``F.softplus(h, beta, threshold)`` exactly, including its linear branch above
``threshold`` (first derivative 1, second derivative 0 there).

Registered with torch.library: ``npht::softplus_mlp_grad`` (forward, its autograd is
``npht::softplus_mlp_grad_backward``). A third derivative is not supported.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["softplus_mlp_with_grad"]

DEFAULT_CHUNK = 1 << 18


def _sp1(g: torch.Tensor, h: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """``g * softplus'(h)``: torch's own softplus backward kernel (one pass; derivative 1
    on the linear branch ``beta * h > threshold``)."""
    return torch.ops.aten.softplus_backward(g, h, beta, threshold)


def _sp2_(g: torch.Tensor, h: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """``g * softplus''(h)``, written into ``g`` (a temporary of ours): ``beta s (1 - s)``
    with ``s = sigmoid(beta h)``, 0 where ``beta * h >= threshold`` (torch's rule)."""
    sig = h * beta
    linear = sig >= threshold
    torch.sigmoid_(sig)
    torch.ops.aten.sigmoid_backward.grad_input(g, sig, grad_input=g)
    return g.mul_(beta).masked_fill_(linear, 0.0)


def _reverse(hs, weights, beta, threshold, keep: bool):
    """Reverse pass over the rows of hs: ``g = d_{-1}`` and, with ``keep``, the
    intermediate ``d_l`` (l = 0 .. L-3; ``d_{L-2}`` is the output row)."""
    d = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    ds = []
    for l in range(len(weights) - 2, -1, -1):
        e = _sp1(d, hs[l], beta, threshold)
        d = e @ weights[l]
        del e
        if keep and l > 0:
            ds.append(d)
    ds.reverse()
    return d, ds


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
    g, _ = _reverse(hs, weights, beta, threshold, keep=False)
    return y, g, hs


def _backward_rows(gy, gg, x, weights, hs, beta, threshold, gW, gb, need_x):
    """Accumulate the rows' weight/bias gradients into gW, gb; return grad_x (or None).
    Working memory: the rows' reverse-pass vectors (recomputed, then overwritten by the
    adjoint contributions) and a few temporaries of the rows' size."""
    L = len(weights)
    w_out = weights[-1][0]
    h_adj: List[Optional[torch.Tensor]] = [None] * (L - 1)
    if gg is not None:  # sweep up: adjoint of the reverse pass
        _, ds = _reverse(hs, weights, beta, threshold, keep=True)
        dbar = gg
        for l in range(L - 1):
            d_l = ds[l] if l < L - 2 else w_out.expand_as(hs[l])
            if gW is not None:
                gW[l].addmm_(_sp1(d_l, hs[l], beta, threshold).t(), dbar)
            ebar = dbar @ weights[l].t()
            del dbar
            # hbar contribution ebar * d_l * s''(h_l), in d_l's buffer when it is ours
            h_adj[l] = _sp2_(ds[l].mul_(ebar) if l < L - 2 else ebar * w_out, hs[l], beta, threshold)
            del d_l
            dbar = _sp1(ebar, hs[l], beta, threshold)
            del ebar
        if gW is not None:
            gW[-1][0].add_(dbar.sum(0))
        del dbar, ds
    abar = None
    if gy is not None:  # output layer
        if gW is not None:
            gW[-1].addmm_(gy[None, :], F.softplus(hs[-1], beta, threshold))
            gb[-1].add_(gy.sum())
        abar = torch.outer(gy, w_out)
    for l in range(L - 2, -1, -1):  # sweep down: adjoint of the forward pass
        if abar is None:
            hbar = h_adj[l]
        else:
            hbar = _sp1(abar, hs[l], beta, threshold)
            del abar
            if h_adj[l] is not None:
                hbar.add_(h_adj[l])
        h_adj[l] = None
        if gW is not None:
            a_prev = x if l == 0 else F.softplus(hs[l - 1], beta, threshold)
            gW[l].addmm_(hbar.t(), a_prev)
            gb[l].add_(hbar.sum(0))
            del a_prev
        abar = hbar @ weights[l] if (l > 0 or need_x) else None
        del hbar
    return abar


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
) -> tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
    M = x.shape[0]
    hs = [x.new_empty(M, w.shape[0]) for w in weights[:-1]] if save else []
    if M <= chunk:
        y, g, _ = _forward_rows(x, weights, biases, beta, threshold, hs or None)
        return y, g, hs
    y = x.new_empty(M)
    g = torch.empty_like(x)
    for r0 in range(0, M, chunk):
        r1 = min(M, r0 + chunk)
        h_out = [h[r0:r1] for h in hs] if save else None
        y[r0:r1], g[r0:r1], _ = _forward_rows(x[r0:r1], weights, biases, beta, threshold, h_out)
    return y, g, hs


@_mlp_grad_op.register_fake
def _(x, weights, biases, beta, threshold, save, chunk):
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
) -> tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    M = x.shape[0]
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
                _, _, hr = _forward_rows(xr, weights, biases, beta, threshold)
            gyr = None if grad_y is None else grad_y[r0:r1]
            ggr = None if grad_g is None else grad_g[r0:r1]
            gxr = _backward_rows(gyr, ggr, xr, weights, hr, beta, threshold, gW, gb, need_x)
            if need_x:
                gx[r0:r1] = gxr
            del hr, gxr
    if not need_params:
        gW, gb = [w.new_empty(0) for w in weights], [b.new_empty(0) for b in biases]
    return gx, gW, gb


@_mlp_grad_backward_op.register_fake
def _(grad_y, grad_g, x, weights, biases, hs, beta, threshold, chunk, need_x, need_params):
    gx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    if need_params:
        return gx, [w.new_empty(w.shape) for w in weights], [b.new_empty(b.shape) for b in biases]
    return gx, [w.new_empty(0) for w in weights], [b.new_empty(0) for b in biases]


def _setup_context(ctx, inputs, output):
    x, weights, biases, beta, threshold, save, chunk = inputs
    _, _, hs = output
    ctx.save_for_backward(x, *weights, *biases, *hs)
    ctx.n_layers = len(weights)
    ctx.args = (float(beta), float(threshold), int(chunk))
    ctx.need_x = x.requires_grad
    ctx.need_params = any(t.requires_grad for t in (*weights, *biases))


def _usable(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _backward(ctx, grad_y, grad_g, _grad_hs):
    L = ctx.n_layers
    x, *rest = ctx.saved_tensors
    weights, biases, hs = list(rest[:L]), list(rest[L:2 * L]), list(rest[2 * L:])
    gx, gW, gb = torch.ops.npht.softplus_mlp_grad_backward(
        _usable(grad_y), _usable(grad_g), x, weights, biases, hs, *ctx.args,
        ctx.need_x, ctx.need_params,
    )
    gx = gx if ctx.need_x else None
    if not ctx.need_params:  # list inputs take a list of Nones
        gW, gb = [None] * L, [None] * L
    return gx, gW, gb, None, None, None, None


_mlp_grad_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function --------------------------------------------------------------------


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
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
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

    Returns:
        ``(y [...], dy_dx [..., D0])``, both differentiable (once) w.r.t. ``x``, the
        weights and the biases: a loss on ``dy_dx`` (eikonal, normals) backpropagates
        into all of them. Matches :func:`npht.reference.softplus_mlp_with_grad`.
    """
    weights, biases = _check(x, weights, biases, beta, threshold, chunk_size)
    lead, D0 = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, D0).contiguous()
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in (*weights, *biases))
    )
    y, g, _ = torch.ops.npht.softplus_mlp_grad(
        x2, weights, biases, float(beta), float(threshold), needs_grad and not checkpoint,
        int(chunk_size),
    )
    return y.reshape(lead), g.reshape(*lead, D0)
