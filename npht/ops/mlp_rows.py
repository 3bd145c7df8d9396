"""The three passes of :func:`npht.softplus_mlp_with_grad` on a block of rows with torch's
products (``matmul="torch"``; :mod:`npht.ops.mlp_tmm` is the same with Triton products and
the elementwise steps fused in): the forward and gradient passes (:func:`forward_rows`)
and the backward's sweeps up and down (:func:`backward_rows`); the math is in
:mod:`npht.ops.mlp`'s docstring."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = ["sp1", "reverse", "reverse_kept", "forward_rows", "backward_rows"]


def sp1(g: torch.Tensor, h: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    """``g * softplus'(h)``: torch's own softplus backward kernel (one pass; derivative 1
    on the linear branch ``beta * h > threshold``)."""
    return torch.ops.aten.softplus_backward(g, h, beta, threshold)


def reverse(hs, weights, beta, threshold, d_out=None):
    """Reverse pass over the rows of hs: ``g = d_{-1}``; ``d_l`` (l = 0 .. L-3) written into
    ``d_out`` when given."""
    d = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    for l in range(len(weights) - 2, -1, -1):
        e = sp1(d, hs[l], beta, threshold)
        d = e @ weights[l] if (d_out is None or l == 0) else torch.mm(e, weights[l], out=d_out[l - 1])
    return d


def reverse_kept(hs, weights, ds, beta, threshold):
    """The reverse pass' products for the backward: ``es[l] = e_l = d_l s'(h_l)`` for
    l = 0 .. L-2 (the weight gradients' left factors, then the adjoint kernel's input),
    from the kept ``d_l`` (``ds``, row slices) or from the reverse pass again (the ``d_l``
    dropped as it goes, ``g`` itself not computed)."""
    d_out = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    if ds:
        return [sp1(d, h, beta, threshold) for d, h in zip([*ds, d_out], hs)]
    d, es = d_out, []
    for l in range(len(weights) - 2, -1, -1):
        e = sp1(d, hs[l], beta, threshold)
        es.append(e)
        if l > 0:
            d = e @ weights[l]
    es.reverse()
    return es


def forward_rows(x, weights, biases, beta, threshold, h_out=None, d_out=None, *, values=True):
    """Rows of x -> (y [rows], g [rows, D0], hs); the pre-activations are written into
    ``h_out`` (row slices of the saved buffers) when given, the reverse pass' ``d_l`` into
    ``d_out``. ``values=False`` (the checkpointed backward's recompute): ``(None, None, hs)``,
    neither the output layer nor the gradient pass run."""
    hs = []
    a = x
    for l in range(len(weights) - 1):
        if h_out is None:
            h = torch.addmm(biases[l], a, weights[l].t())
        else:
            h = torch.addmm(biases[l], a, weights[l].t(), out=h_out[l])
        hs.append(h)
        if not values and l == len(weights) - 2:
            return None, None, hs
        a = F.softplus(h, beta, threshold)
    y = torch.addmm(biases[-1], a, weights[-1].t()).squeeze(-1)
    del a
    g = reverse(hs, weights, beta, threshold, d_out)
    return y, g, hs


def backward_rows(gy, gg, x, weights, hs, ds, beta, threshold, gW, gb, need_x, k):
    """Accumulate the rows' weight/bias gradients into gW, gb; return grad_x (or None).
    ``k``: the module of the elementwise kernels (npht_C, npht.kernels.mlp or the
    reference). ``ds``: the rows' kept reverse-pass vectors, or empty (recomputed). Working
    memory: the rows' ``e_l = d_l s'(h_l)`` (overwritten in place by the adjoint
    contributions) and a few temporaries of the rows' size."""
    L = len(weights)
    w_out = weights[-1][0]
    h_adj: List[Optional[torch.Tensor]] = [None] * (L - 1)
    if gg is not None:  # sweep up: adjoint of the reverse pass
        es = reverse_kept(hs, weights, ds, beta, threshold)
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
            hbar = sp1(abar, hs[l], beta, threshold)
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
