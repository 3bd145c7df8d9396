"""The passes of the fused softplus-MLP gradient with Triton products (``matmul="triton"``
of :func:`npht.softplus_mlp_with_grad`; the torch-product passes are in npht/ops/mlp_rows.py,
whose ``forward_rows`` / ``backward_rows`` these mirror, the registered ops in npht/ops/mlp.py). ``mm`` is
npht.kernels.mlp_mm, ``k`` the module of the backward's elementwise kernels.

kernels/mlp_mm.py fuses the elementwise steps into the products' prologues and epilogues
and the weight gradients' factors into their row reductions: per hidden layer 22 passes
over [rows, width] arrays instead of 34 (forward 5; sweep up 11: recompute 3, weight
gradient 3, adjoint 5; sweep down 6: product 4, weight gradient 2; the bias gradients
summed in the epilogues), 19 with keep_gradient_pass (no recompute), and 3 instead of
about 9 for the output layer's backward.
"""

from __future__ import annotations

from typing import List, Optional

import torch


def forward_rows(x, weights, biases, beta, threshold, h_out=None, d_out=None, *, mm, h_dtype=None, d_dtype=None,
                 values=True):
    """``mlp_rows.forward_rows`` with Triton products: ``h_l = s(h_{l-1}) W_l^T + b_l`` (the
    softplus in the product's prologue), ``d_{l-1} = (d_l s'(h_l)) W_l`` likewise. The
    pre-activations are stored in ``h_dtype``, the gradient pass' vectors ``d_l`` (not ``g``)
    in ``d_dtype`` (float16: computed in float32, rounded). ``values=False``: the
    pre-activations only, ``(None, None, hs)``."""
    hs = []
    a, softplus_input = x, False
    for l in range(len(weights) - 1):
        h = mm.linear(a, weights[l], biases[l], softplus_input=softplus_input, beta=beta, threshold=threshold,
                      out=None if h_out is None else h_out[l], out_dtype=h_dtype)
        hs.append(h)
        a, softplus_input = h, True
    if not values:
        return None, None, hs
    y = mm.linear(a, weights[-1], biases[-1], softplus_input=True, beta=beta, threshold=threshold).squeeze(-1)
    d = weights[-1][0]  # d_{L-2}: the output row, broadcast over the rows
    for l in range(len(weights) - 2, -1, -1):
        out = None if (d_out is None or l == 0) else d_out[l - 1]
        d = mm.reverse_step(d, hs[l], weights[l], beta=beta, threshold=threshold, out=out,
                            out_dtype=d_dtype if l > 0 else None)
    return y, d, hs


def backward_rows(gy, gg, x, weights, hs, ds, beta, threshold, gW, gb, need_x, *, k, mm, d_dtype=None):
    """``mlp_rows.backward_rows`` with Triton products. Sweep up: the reverse pass' ``d_l`` (kept,
    or recomputed by products with ``s'`` in their prologue), then per layer
    ``gW_l += (d_l s'(h_l))^T dbar`` (a reduction with the ``s'`` in its prologue) and one
    product ``ebar = dbar W_l^T`` whose epilogue gives ``dbar_l = ebar s'(h_l)`` and the
    adjoint's contribution ``ebar d_l s''(h_l)`` to ``hbar_l``. Output layer: one
    elementwise kernel (``hbar += gy w_out s'(h)``, with the column sums for its weight and
    bias gradients). Sweep down: one product ``abar = hbar_l W_l`` whose epilogue adds
    ``abar s'(h_{l-1})`` into the contribution (the layer below's ``hbar``, with its column
    sums: the bias gradient), and ``gW_l += hbar_l^T s(h_{l-1})`` (a reduction with the
    softplus in its prologue)."""
    L = len(weights)
    w_out = weights[-1][0]
    sc = {"beta": beta, "threshold": threshold}
    need_params = gW is not None
    h_adj: List[Optional[torch.Tensor]] = [None] * (L - 1)
    if gg is not None:  # sweep up: adjoint of the reverse pass
        if ds:
            d_all: List[Optional[torch.Tensor]] = [*ds, w_out]
        else:
            d_all = [None] * (L - 2) + [w_out]
            for l in range(L - 2, 0, -1):
                d_all[l - 1] = mm.reverse_step(d_all[l], hs[l], weights[l], out_dtype=d_dtype, **sc)
        dbar = gg
        for l in range(L - 1):
            if need_params:
                mm.weight_grad(d_all[l], dbar, a_h=hs[l], out=gW[l], **sc)
            last = l == L - 2
            res = mm.adjoint_step(dbar, weights[l], d_all[l], hs[l], colsum=last and need_params, **sc)
            dbar, h_adj[l] = res[0], res[1]
            if last and need_params:  # the last dbar's column sums: W_L's gradient
                gW[-1][0].add_(res[2])
            d_all[l] = None
            del res
        del dbar, d_all
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
            res = mm.down_step(hbar, weights[l], hs[l - 1], h_adj[l - 1], colsum=need_params, **sc)
            hbar_prev, prev_sum = res if need_params else (res, None)
            h_adj[l - 1] = None
        else:
            hbar_prev = hbar @ weights[0] if need_x else None
        if need_params:
            if l > 0:
                mm.weight_grad(hbar, hs[l - 1], b_softplus=True, out=gW[l], **sc)
            else:
                gW[0].addmm_(hbar.t(), x)
            gb[l].add_(hbar.sum(0) if hbar_sum is None else hbar_sum)
        hbar, hbar_sum = hbar_prev, prev_sum
    return hbar
