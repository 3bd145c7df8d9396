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

Only the pre-activations ``h_l`` are kept (one ``[M, width]`` tensor per hidden layer;
float16 with ``h_dtype=torch.float16`` and Triton products), or nothing at all with
``checkpoint=True``, or also the reverse pass' ``d_l`` with ``keep_gradient_pass=True``
(float16 with ``d_dtype=torch.float16``). The backward runs in chunks of ``chunk_size`` rows: it
recomputes the chunk's reverse pass (unless kept; and with ``checkpoint`` its
pre-activations), so its working memory is a few chunk-sized temporaries whatever the
number of points.

Per hidden layer the math needs six GEMMs (forward, reverse, and four in the backward);
the chunked backward adds one (the reverse pass again), ``checkpoint`` one more (the
forward's products, to the last pre-activation). In
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
``npht::softplus_mlp_grad_backward``, whose own derivative, the MLP's third, is computed
unfused from the explicit formula by torch.func: rarely needed). Under torch.func
transforms the same two ops run through autograd.Functions with batching rules; forward-mode
AD takes the explicit PyTorch formula (see the section below).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils import _pytree as pytree

from . import mlp_rows, mlp_tmm
from . import _backend
from ._backend import kernels, resolve_backend, under_transform

__all__ = ["matmul_precision", "softplus_mlp_with_grad"]

DEFAULT_CHUNK = 1 << 18

PRECISIONS = ("highest", "high", "medium")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision(precision)`` for a block, restored after it (also
    on an exception). ``"high"``: float32 products in TF32 on a GPU, torch's and
    ``softplus_mlp_with_grad(matmul="triton")``'s alike (both read the setting when they
    run, so a backward must run inside the block too); ``"highest"``: IEEE float32.
    For example, an eikonal step in TF32::

        with npht.matmul_precision("high"):
            _, grad = decoder.sdf_and_gradient(planes, points)
            ((grad.norm(dim=-1) - 1) ** 2).mean().backward()
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


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
    keep: bool,
    h_dtype: torch.dtype,
    d_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    with _no_autocast(x):
        return _mlp_grad_impl(x, weights, biases, beta, threshold, save, chunk, backend, matmul, keep, h_dtype,
                              d_dtype)


def _no_autocast(x: torch.Tensor):
    """The ops' bodies run in their inputs' dtypes: under torch.autocast the products would
    come back in bfloat16/float16 (not what register_fake says) and the backward's float32
    buffers would meet them (a dtype error)."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


def _mlp_grad_impl(x, weights, biases, beta, threshold, save, chunk, backend, matmul, keep, h_dtype, d_dtype):
    M = x.shape[0]
    hs = [x.new_empty(M, w.shape[0], dtype=h_dtype) for w in weights[:-1]] if save else []
    ds = [x.new_empty(M, w.shape[0], dtype=d_dtype) for w in weights[:-2]] if (save and keep) else []
    rows = mlp_rows.forward_rows if matmul == "torch" else functools.partial(
        mlp_tmm.forward_rows, mm=kernels("triton", "mlp_mm"), h_dtype=h_dtype, d_dtype=d_dtype)
    if M <= chunk:
        y, g, _ = rows(x, weights, biases, beta, threshold, hs or None, ds or None)
        return y, g, hs, ds
    y = x.new_empty(M)
    g = torch.empty_like(x)
    for r0 in range(0, M, chunk):
        r1 = min(M, r0 + chunk)
        h_out = [h[r0:r1] for h in hs] if save else None
        d_out = [d[r0:r1] for d in ds] if ds else None
        y[r0:r1], g[r0:r1], _ = rows(x[r0:r1], weights, biases, beta, threshold, h_out, d_out)
    return y, g, hs, ds


@_mlp_grad_op.register_fake
def _(x, weights, biases, beta, threshold, save, chunk, backend, matmul, keep, h_dtype, d_dtype):
    M = x.shape[0]
    hs = [x.new_empty(M, w.shape[0], dtype=h_dtype) for w in weights[:-1]] if save else []
    ds = [x.new_empty(M, w.shape[0], dtype=d_dtype) for w in weights[:-2]] if (save and keep) else []
    return x.new_empty(M), x.new_empty(x.shape), hs, ds


@torch.library.custom_op("npht::softplus_mlp_grad_backward", mutates_args=())
def _mlp_grad_backward_op(
    grad_y: Optional[torch.Tensor],
    grad_g: Optional[torch.Tensor],
    x: torch.Tensor,
    weights: List[torch.Tensor],
    biases: List[torch.Tensor],
    hs: List[torch.Tensor],
    ds: List[torch.Tensor],
    beta: float,
    threshold: float,
    chunk: int,
    need_x: bool,
    need_params: bool,
    backend: str,
    matmul: str,
    h_dtype: torch.dtype,
    d_dtype: torch.dtype,
) -> tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    with _no_autocast(x):
        return _mlp_grad_backward_impl(grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, chunk, need_x,
                                       need_params, backend, matmul, h_dtype, d_dtype)


def _mlp_grad_backward_impl(grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, chunk, need_x,
                            need_params, backend, matmul, h_dtype, d_dtype):
    M = x.shape[0]
    k = kernels(backend, "mlp")
    if matmul == "torch":
        rows_fwd, rows_bwd = mlp_rows.forward_rows, functools.partial(mlp_rows.backward_rows, k=k)
    else:
        mm = kernels("triton", "mlp_mm")
        rows_fwd = functools.partial(mlp_tmm.forward_rows, mm=mm, h_dtype=h_dtype, d_dtype=d_dtype)
        rows_bwd = functools.partial(mlp_tmm.backward_rows, k=k, mm=mm, d_dtype=d_dtype)
    gW = [torch.zeros_like(w) for w in weights] if need_params else None
    gb = [torch.zeros_like(b) for b in biases] if need_params else None
    gx = torch.zeros_like(x) if need_x else x.new_empty(0)
    if M > 0 and (grad_y is not None or grad_g is not None):
        for r0 in range(0, M, chunk):
            r1 = min(M, r0 + chunk)
            xr = x[r0:r1]
            if hs:
                hr = [h[r0:r1] for h in hs]
            else:  # checkpoint: recompute the rows' pre-activations (only them)
                _, _, hr = rows_fwd(xr, weights, biases, beta, threshold, values=False)
            dr = [d[r0:r1] for d in ds]
            gyr = None if grad_y is None else grad_y[r0:r1]
            ggr = None if grad_g is None else grad_g[r0:r1]
            gxr = rows_bwd(gyr, ggr, xr, weights, hr, dr, beta, threshold, gW, gb, need_x)
            if need_x:
                gx[r0:r1] = gxr
            del hr, dr, gxr
    if not need_params:
        gW, gb = [w.new_empty(0) for w in weights], [b.new_empty(0) for b in biases]
    return gx, gW, gb


@_mlp_grad_backward_op.register_fake
def _(grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, chunk, need_x, need_params, backend, matmul,
      h_dtype, d_dtype):
    gx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    if need_params:
        return gx, [w.new_empty(w.shape) for w in weights], [b.new_empty(b.shape) for b in biases]
    return gx, [w.new_empty(0) for w in weights], [b.new_empty(0) for b in biases]


def _setup_context(ctx, inputs, output):
    x, weights, biases, beta, threshold, save, chunk, backend, matmul, keep, h_dtype, d_dtype = inputs
    _, _, hs, ds = output
    ctx.save_for_backward(x, *weights, *biases, *hs, *ds)
    # hs and ds are saved state, not results: no gradient flows into them, and none must
    # be materialised (zero-filled [M, width] tensors, one per hidden layer, would double
    # the op's memory); an unused y or g then arrives as None too.
    ctx.mark_non_differentiable(*hs, *ds)
    ctx.set_materialize_grads(False)
    ctx.n_layers = len(weights)
    ctx.n_saved_h = len(hs)
    ctx.args = (float(beta), float(threshold), int(chunk))
    ctx.need_x = x.requires_grad
    ctx.need_params = any(t.requires_grad for t in (*weights, *biases))
    ctx.backend = backend
    ctx.matmul = matmul
    ctx.h_dtype = h_dtype
    ctx.d_dtype = d_dtype


def _usable(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _backward(ctx, grad_y, grad_g, _grad_hs, _grad_ds):
    L, nh = ctx.n_layers, ctx.n_saved_h
    x, *rest = ctx.saved_tensors
    weights, biases = list(rest[:L]), list(rest[L:2 * L])
    hs, ds = list(rest[2 * L:2 * L + nh]), list(rest[2 * L + nh:])
    gx, gW, gb = torch.ops.npht.softplus_mlp_grad_backward(
        _usable(grad_y), _usable(grad_g), x, weights, biases, hs, ds, *ctx.args,
        ctx.need_x, ctx.need_params, ctx.backend, ctx.matmul, ctx.h_dtype, ctx.d_dtype,
    )
    gx = gx if ctx.need_x else None
    if not ctx.need_params:  # list inputs take a list of Nones
        gW, gb = [None] * L, [None] * L
    return gx, gW, gb, None, None, None, None, None, None, None, None, None


_mlp_grad_op.register_autograd(_backward, setup_context=_setup_context)


def _explicit_double_backward(grad_y, grad_g, x, weights, biases, beta, threshold, gg_x, gg_w, gg_b):
    """The derivative of the fused backward (the MLP's third derivative; rarely needed: an
    eikonal loss needs the second), unfused: the vjp of the vjp of
    :func:`npht.reference.mlp.softplus_mlp_with_grad_explicit`, by torch.func (so it runs
    under the transforms too, and is differentiable again). ``grad_y``, ``grad_g``: the
    backward's upstream gradients (None: absent); ``gg_*``: the gradients of its results
    (None or empty: absent). Returns the gradients w.r.t. ``grad_y``, ``grad_g``, ``x``, the
    weights and the biases (None for an absent upstream gradient)."""
    from npht.reference.mlp import softplus_mlp_with_grad_explicit

    def mlp(x, ws, bs):
        return softplus_mlp_with_grad_explicit(x, ws, bs, beta, threshold)

    def backward(gy, gg, x, ws, bs):
        return torch.func.vjp(mlp, x, ws, bs)[1]((gy, gg))

    gy = grad_y if grad_y is not None else x.new_zeros(x.shape[:1])
    gg = grad_g if grad_g is not None else torch.zeros_like(x)
    (gx, gws, gbs), vjp = torch.func.vjp(backward, gy, gg, x, tuple(weights), tuple(biases))

    def cot(t, like):
        return torch.zeros_like(like) if t is None or t.numel() == 0 else t

    g_gy, g_gg, g_x, g_ws, g_bs = vjp((cot(gg_x, gx), tuple(cot(t, w) for t, w in zip(gg_w, gws)),
                                       tuple(cot(t, b) for t, b in zip(gg_b, gbs))))
    return (g_gy if grad_y is not None else None, g_gg if grad_g is not None else None, g_x, list(g_ws),
            list(g_bs))


def _bwd_setup_context(ctx, inputs, output):
    grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, *_ = inputs
    ctx.save_for_backward(grad_y, grad_g, x, *weights, *biases)
    ctx.n_layers, ctx.n_state = len(weights), (len(hs), len(ds))
    ctx.beta, ctx.threshold = float(beta), float(threshold)
    ctx.set_materialize_grads(False)


def _bwd_backward(ctx, gg_x, gg_w, gg_b):
    grad_y, grad_g, x, *params = ctx.saved_tensors
    L = ctx.n_layers
    g_gy, g_gg, g_x, g_w, g_b = _explicit_double_backward(
        grad_y, grad_g, x, params[:L], params[L:], ctx.beta, ctx.threshold, gg_x,
        [None] * L if gg_w is None else gg_w, [None] * L if gg_b is None else gg_b)
    nh, nd = ctx.n_state
    return (g_gy, g_gg, g_x, g_w, g_b, [None] * nh, [None] * nd) + (None,) * 9


_mlp_grad_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# ---- torch.func (functorch) transforms ----------------------------------------------------
# As for npht.triplane_sample (npht/ops/triplane.py): torch.library's register_autograd
# wrapper is refused by functorch (pytorch/pytorch#168393, open in torch 2.13) and drops
# forward-mode tangents without a word. Under grad / vjp / jacrev / vmap the two ops run
# through the autograd.Functions below instead (same ops, same kernels, same options), with
# the ops' own vmap rules (vmap, jacrev, vmap of a vjp function):
# - one MLP, V sets of points (only x or the upstream gradients batched, and no weight
#   gradient asked of the backward): the copies are V times as many rows of one launch;
# - weights or biases batched (an ensemble of MLPs), or the backward's weight gradients
#   wanted (they are sums over the rows, which a folded launch would add across the copies):
#   one launch per copy.
# Forward mode (jvp, jacfwd, dual tensors) has no fused formula (the backward computes
# vector-Jacobian products; the JVP of the gradient output is a Hessian-vector product no
# kernel computes): there softplus_mlp_with_grad evaluates the same math in PyTorch ops.
# Plain autograd's
# autograd.grad(..., is_grads_batched=True) batches with torch's legacy vmap prototype
# (torch._vmap_internals), which ignores register_vmap rules and cannot loop over these ops'
# list results: it raises; torch.func.vmap over a torch.func.vjp function does the same.


def _fold_rows(t: Optional[torch.Tensor], d: Optional[int], V: int) -> Optional[torch.Tensor]:
    """A per-row argument ``[M, ...]`` with the vmapped dimension at ``d`` (None: shared by
    the V copies) -> the copies' rows one after the other, ``[V*M, ...]``."""
    if t is None:
        return None
    t = t.movedim(d, 0) if d is not None else t.expand(V, *t.shape)
    return t.reshape(V * t.shape[1], *t.shape[2:]).contiguous()


def _unfold_rows(t: torch.Tensor, V: int) -> torch.Tensor:
    return t.reshape(V, t.shape[0] // V, *t.shape[1:])


def _per_copy(info, in_dims, op, *args):
    """The batched call as one call of ``op`` per vmapped copy, results stacked (dim 0)."""
    def select(a, d, v):
        if isinstance(a, (list, tuple)):
            return [select(t, dt, v) for t, dt in zip(a, d)]
        return a if d is None else a.select(d, v).contiguous()

    outs = [pytree.tree_flatten(op(*(select(a, d, v) for a, d in zip(args, in_dims))))
            for v in range(info.batch_size)]
    stacked = [torch.stack(leaves) for leaves in zip(*(flat for flat, _ in outs))]
    return pytree.tree_unflatten(stacked, outs[0][1]), 0


def _one_mlp(weight_dims, bias_dims) -> bool:
    return all(d is None for d in (*weight_dims, *bias_dims))


@torch.library.register_vmap("npht::softplus_mlp_grad")
def _mlp_grad_vmap(info, in_dims, x, weights, biases, *args):
    if not _one_mlp(in_dims[1], in_dims[2]):  # an ensemble: one launch per MLP
        return _per_copy(info, in_dims, torch.ops.npht.softplus_mlp_grad, x, weights, biases, *args)
    V = info.batch_size  # x is batched: V sets of points of one MLP
    y, g, hs, ds = torch.ops.npht.softplus_mlp_grad(_fold_rows(x, in_dims[0], V), weights, biases, *args)
    return (_unfold_rows(y, V), _unfold_rows(g, V), [_unfold_rows(h, V) for h in hs],
            [_unfold_rows(d, V) for d in ds]), 0


@torch.library.register_vmap("npht::softplus_mlp_grad_backward")
def _mlp_grad_backward_vmap(info, in_dims, grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, chunk,
                            need_x, need_params, *args):
    op = torch.ops.npht.softplus_mlp_grad_backward
    if need_params or not _one_mlp(in_dims[3], in_dims[4]):  # per-copy weight gradients, or an ensemble
        return _per_copy(info, in_dims, op, grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, chunk,
                         need_x, need_params, *args)
    V = info.batch_size

    def rows(ts, dims):
        return [_fold_rows(t, d, V) for t, d in zip(ts, dims)]

    gx, gW, gb = op(_fold_rows(grad_y, in_dims[0], V), _fold_rows(grad_g, in_dims[1], V),
                    _fold_rows(x, in_dims[2], V), weights, biases, rows(hs, in_dims[5]), rows(ds, in_dims[6]),
                    beta, threshold, chunk, need_x, need_params, *args)
    # no weight gradients asked: their results are empty, unbatched
    return (_unfold_rows(gx, V) if need_x else gx, gW, gb), (0 if need_x else None, None, None)


class _MlpGradFn(torch.autograd.Function):
    """``npht::softplus_mlp_grad`` for torch.func transforms (reverse mode): ``(y, g, *hs,
    *ds)`` from ``(x, args, *weights, *biases)``; its backward is :class:`_MlpGradBackwardFn`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, args, *params):
        L = len(params) // 2
        y, g, hs, ds = torch.ops.npht.softplus_mlp_grad(x, list(params[:L]), list(params[L:]), *args.values)
        return (y, g, *hs, *ds)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, args, *params = inputs
        _, _, *saved = output
        ctx.save_for_backward(x, *params, *saved)
        ctx.mark_non_differentiable(*saved)  # saved state (hs, ds), not results
        ctx.set_materialize_grads(False)
        ctx.args = args
        ctx.n_layers = len(params) // 2
        ctx.n_saved_h = ctx.n_layers - 1 if saved else 0

    @staticmethod
    def backward(ctx, grad_y, grad_g, *_saved_grads):
        L, nh = ctx.n_layers, ctx.n_saved_h
        x, *rest = ctx.saved_tensors
        params, hs, ds = rest[:2 * L], rest[2 * L:2 * L + nh], rest[2 * L + nh:]
        need_x, need_params = ctx.needs_input_grad[0], any(ctx.needs_input_grad[2:])
        if grad_y is None and grad_g is None or not (need_x or need_params):
            return (None,) * (2 + 2 * L)
        beta, threshold, _save, chunk, backend, matmul, _keep, h_dtype, d_dtype = ctx.args.values
        args = _backend.OpaqueArgs((L, len(hs), len(ds), beta, threshold, chunk, need_x, need_params, backend,
                                    matmul, h_dtype, d_dtype))
        gx, *g_params = _MlpGradBackwardFn.apply(_usable(grad_y), _usable(grad_g), x, args, *params, *hs, *ds)
        return (gx if need_x else None, None,
                *(g if need else None for g, need in zip(g_params, ctx.needs_input_grad[2:])))


class _MlpGradBackwardFn(torch.autograd.Function):
    """``npht::softplus_mlp_grad_backward`` for torch.func transforms: ``(gx, *g_weights,
    *g_biases)``; its derivative is :func:`_explicit_double_backward`, as with plain autograd."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_y, grad_g, x, args, *tensors):
        L, nh, nd, beta, threshold, chunk, need_x, need_params, backend, matmul, h_dtype, d_dtype = args.values
        weights, biases = list(tensors[:L]), list(tensors[L:2 * L])
        hs, ds = list(tensors[2 * L:2 * L + nh]), list(tensors[2 * L + nh:2 * L + nh + nd])
        gx, gW, gb = torch.ops.npht.softplus_mlp_grad_backward(
            grad_y, grad_g, x, weights, biases, hs, ds, beta, threshold, chunk, need_x, need_params, backend,
            matmul, h_dtype, d_dtype)
        return (gx, *gW, *gb)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_y, grad_g, x, args, *tensors = inputs
        L, _, _, beta, threshold = args.values[:5]
        ctx.save_for_backward(grad_y, grad_g, x, *tensors[:2 * L])
        ctx.n_layers, ctx.n_inputs = L, len(inputs)
        ctx.beta, ctx.threshold = beta, threshold
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg_x, *gg_params):
        grad_y, grad_g, x, *params = ctx.saved_tensors
        L = ctx.n_layers
        g_gy, g_gg, g_x, g_w, g_b = _explicit_double_backward(
            grad_y, grad_g, x, params[:L], params[L:], ctx.beta, ctx.threshold, gg_x, gg_params[:L],
            gg_params[L:2 * L])
        grads = (g_gy, g_gg, g_x, None, *g_w, *g_b)
        return grads + (None,) * (ctx.n_inputs - len(grads))


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


def _resolve_storage_dtype(name: str, what: str, dtype, x: torch.Tensor, matmul: str) -> torch.dtype:
    """``h_dtype`` / ``d_dtype``: ``None`` -> x's dtype; ``torch.float16`` needs float32 inputs
    and Triton products."""
    if dtype is None or dtype == x.dtype:
        return x.dtype
    if not isinstance(dtype, torch.dtype) or dtype != torch.float16:
        raise TypeError(f"{name} must be None, x's dtype or torch.float16, got {dtype!r}")
    if x.dtype != torch.float32 or matmul != "triton":
        raise ValueError(f"{name}=torch.float16 stores float32 {what} in the Triton products' kernels: it needs "
                         f"float32 inputs and matmul='triton' (got {x.dtype}, matmul={matmul!r})")
    return dtype


def _check(x, weights, biases, beta, threshold, chunk_size):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must be [..., D], got a 0-d tensor")
    weights, biases = list(weights), list(biases)
    if len(weights) < 2:
        raise ValueError(f"weights must hold at least 2 layers (one softplus), got {len(weights)}")
    if len(biases) != len(weights):
        raise ValueError(f"biases must match weights: got {len(biases)} biases for {len(weights)} weights")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.shape[-1] < 1:
        raise ValueError(f"x must be [..., D0] with D0 >= 1 input features, got shape {tuple(x.shape)}")
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
    keep_gradient_pass: bool = False,
    h_dtype: Optional[torch.dtype] = None,
    d_dtype: Optional[torch.dtype] = None,
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
            prologues and epilogues, the weight gradients' factors into their row
            reductions: 22 passes over ``[rows, width]`` arrays per hidden layer instead
            of 34; GPU, or the interpreter on the CPU; float32/float64).
            Both follow torch's float32 matmul precision (TF32 unless it is ``"highest"``);
            ``"triton"`` is meant for TF32, where the products are memory-bound (in IEEE
            float32 they are compute-bound, and torch's are the better choice).
        keep_gradient_pass: also keep the input-gradient pass' vectors ``d_l`` (one more
            ``[rows, width]`` tensor per hidden layer but the last) so that the backward
            does not recompute that pass: per hidden layer one product and, with
            ``matmul="triton"``, 3 of 22 passes over ``[rows, width]`` fewer, for L-2 saved
            tensors beside the L-1 pre-activations (a smaller ``chunk_size``, which
            shrinks the backward's working memory, can offset part of it). Not with
            ``checkpoint``.
        h_dtype: the dtype the pre-activations ``h_l`` are stored in (saved for the backward
            and passed between the kernels): ``None`` (x's dtype) or, with
            ``matmul="triton"`` and float32, ``torch.float16``: everything is still computed
            in float32, but each ``h_l`` is rounded to float16's 11 significant bits (the
            precision TF32 gives a product's inputs) when written, which halves the saved
            tensors' memory and the traffic of the ~7 reads per hidden layer that take them
            (22 passes over ``[rows, width]`` float32 arrays become about 18). Values beyond
            float16's range (|h| > 65504) overflow: for decoders whose pre-activations are
            O(1-100), as SDF decoders' are. The gradients then differ from float32's by about
            TF32's rounding (tests/ops/test_mlp_mm.py measures it).
        d_dtype: likewise for the gradient pass' vectors ``d_l = dy/da_l`` (kept with
            ``keep_gradient_pass``, else recomputed in the backward; ``g`` itself stays in x's
            dtype): ``torch.float16`` rounds them to the 11 significant bits TF32 keeps of a
            product's inputs (they are the left operands of the gradient pass' and the weight
            gradients' products) and halves their memory and traffic (with ``h_dtype`` too,
            about 13.5 pass-equivalents per hidden layer instead of 15.5 with
            ``keep_gradient_pass``). float16's range is the caveat: entries below ~6e-5 lose
            relative precision (subnormals), below ~6e-8 they vanish; an SDF decoder's
            ``d_l`` are O(1e-3-1) (its gradient has norm ~1), a network whose ``dy/da`` are
            much smaller should keep float32.

    Returns:
        ``(y [...], dy_dx [..., D0])``, both differentiable (once) w.r.t. ``x``, the
        weights and the biases: a loss on ``dy_dx`` (eikonal, normals) backpropagates
        into all of them. Matches :func:`npht.reference.softplus_mlp_with_grad`.

    The same fused op serves torch.func's reverse-mode transforms, ``grad``, ``vjp``,
    ``jacrev`` and ``vmap``, with every option above: ``vmap`` over points (only ``x`` or the
    upstream gradients batched) folds the copies into the rows of one launch; over
    weights/biases (an ensemble), and the backward's batched weight gradients (``jacrev``
    w.r.t. the weights), run one launch per copy. Beyond the fused first derivative of
    ``(y, dy_dx)`` (what an eikonal loss needs), derivatives of the op's backward (``grad`` of
    a loss on ``grad(y)``, ``jacrev(jacrev(y))``, a third derivative) are computed unfused
    from the explicit formula, in plain autograd and under the transforms alike. Forward mode
    (``jvp``, ``jacfwd``, ``torch.func.hessian``, ``torch.autograd.forward_ad`` dual
    tensors) has no fused formula: there the result comes from the same math in PyTorch
    ops (:func:`npht.reference.mlp.softplus_mlp_with_grad_explicit`: unfused,
    differentiable in every mode), where ``checkpoint``, ``chunk_size``, ``backend``,
    ``matmul`` and the storage options do not apply; so does a transform inside
    ``torch.compile`` (a limitation of torch 2.13's tracing of these autograd.Functions).
    ``autograd.grad(..., is_grads_batched=True)`` raises (torch's legacy vmap prototype
    cannot batch the op): vmap a ``torch.func.vjp`` function instead.
    """
    weights, biases = _check(x, weights, biases, beta, threshold, chunk_size)
    backend = _resolve(backend, x)
    matmul = _resolve_matmul(matmul, x)
    lead, D0 = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, D0).contiguous()
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(t.requires_grad for t in (*weights, *biases))
    )
    if not isinstance(keep_gradient_pass, bool):
        raise TypeError(f"keep_gradient_pass must be a bool, got {keep_gradient_pass!r}")
    if keep_gradient_pass and checkpoint:
        raise ValueError("keep_gradient_pass=True keeps more for the backward, checkpoint=True keeps nothing: "
                         "choose one")
    if matmul == "triton":  # the products read biases and the output row with unit stride
        biases = [b.contiguous() for b in biases]
        weights[-1] = weights[-1].contiguous()
    h_dtype = _resolve_storage_dtype("h_dtype", "pre-activations", h_dtype, x, matmul)
    d_dtype = _resolve_storage_dtype("d_dtype", "gradient-pass vectors", d_dtype, x, matmul)
    if under_transform(x, *weights, *biases):
        # torch.func / forward-mode AD: the registered op's autograd is not usable there
        # (pytorch/pytorch#168393)
        # no fused forward-mode formula: the same math in PyTorch ops; likewise inside
        # torch.compile, whose Dynamo (torch 2.13) binds the arguments of an autograd.Function
        # whose forward takes *args wrongly (the Functions' *params)
        if torch.compiler.is_compiling() or _backend.forward_mode(x, *weights, *biases):
            from npht.reference.mlp import softplus_mlp_with_grad_explicit

            return softplus_mlp_with_grad_explicit(x, weights, biases, float(beta), float(threshold))
        # a tensor wrapped by vmap does not say whether a grad transform around it tracks it:
        # save for the backward whenever grad mode is on
        args = (float(beta), float(threshold), torch.is_grad_enabled() and not checkpoint, int(chunk_size), backend,
                matmul, keep_gradient_pass, h_dtype, d_dtype)
        y, g, *_ = _MlpGradFn.apply(x2, _backend.OpaqueArgs(args), *weights, *biases)
    else:
        y, g, _, _ = torch.ops.npht.softplus_mlp_grad(
            x2, weights, biases, float(beta), float(threshold), needs_grad and not checkpoint,
            int(chunk_size), backend, matmul, keep_gradient_pass, h_dtype, d_dtype,
        )
    return y.reshape(lead), g.reshape(*lead, D0)
