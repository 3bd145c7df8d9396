"""``npht.volume_composite``: fused VolSDF compositing (Laplace density, transmittance,
weights, weighted sums of per-sample values, depth and opacity), forward and backward in
one pass per ray, dense ``[R, S]`` or packed (CSR ray offsets) layout.

Ops: ``npht::volume_composite`` (forward) whose backward is
``npht::volume_composite_backward`` (the fused kernels). The backward's own derivative
(double backward, rarely needed: compositing is first-order in the renderer, the normals'
double backward happens in the SDF) is computed by autograd through the PyTorch reference,
so second derivatives are exact but not fused. Under torch.func transforms the same two ops
run through autograd.Functions, with batching rules that fold the vmapped copies into the
rays (one launch); forward-mode AD takes the PyTorch reference (see the section below).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Union

import torch

from . import _backend

__all__ = ["volume_composite", "CompositeResult"]

LAST_DELTA = 1e10


class CompositeResult(NamedTuple):
    """``rendered [R, K]`` (``[R, 0]`` without values), ``depth [R]``, ``opacity [R]``,
    ``weights`` (the layout of ``sdf``)."""

    rendered: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    weights: torch.Tensor


@torch.library.custom_op("npht::volume_composite", mutates_args=())
def _composite_op(
    sdf: torch.Tensor,
    z: torch.Tensor,
    beta: torch.Tensor,
    values: Optional[torch.Tensor],
    offsets: Optional[torch.Tensor],
    last_delta: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rendered, depth, opacity, weights = _backend.kernels(backend, "composite").composite_fwd(
        sdf, z, beta, values, offsets, last_delta
    )
    return rendered, depth, opacity, weights


def _num_rays(sdf, offsets):
    return sdf.shape[0] if offsets is None else offsets.shape[0] - 1


@_composite_op.register_fake
def _(sdf, z, beta, values, offsets, last_delta, backend):
    R = _num_rays(sdf, offsets)
    K = 0 if values is None else values.shape[-1]
    return sdf.new_empty((R, K)), sdf.new_empty((R,)), sdf.new_empty((R,)), torch.empty_like(sdf)


@torch.library.custom_op("npht::volume_composite_backward", mutates_args=())
def _composite_backward_op(
    grad_rendered: Optional[torch.Tensor],
    grad_depth: Optional[torch.Tensor],
    grad_opacity: Optional[torch.Tensor],
    grad_weights: Optional[torch.Tensor],
    sdf: torch.Tensor,
    z: torch.Tensor,
    beta: torch.Tensor,
    values: Optional[torch.Tensor],
    offsets: Optional[torch.Tensor],
    last_delta: float,
    backend: str,
    need_sdf: bool,
    need_z: bool,
    need_beta: bool,
    need_values: bool,
    weights: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g_sdf, g_z, g_beta, g_values = _backend.kernels(backend, "composite").composite_bwd(
        grad_rendered, grad_depth, grad_opacity, grad_weights, sdf, z, beta, values, offsets,
        last_delta, need_sdf, need_z, need_beta, need_values, weights,
    )
    return g_sdf, g_z, g_beta, g_values


@_composite_backward_op.register_fake
def _(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf, z, beta, values, offsets,
      last_delta, backend, need_sdf, need_z, need_beta, need_values, weights=None):
    R = _num_rays(sdf, offsets)
    return (
        torch.empty_like(sdf) if need_sdf else sdf.new_empty((0,)),
        torch.empty_like(z) if need_z else sdf.new_empty((0,)),
        sdf.new_empty((R,)) if need_beta else sdf.new_empty((0,)),
        torch.empty_like(values) if need_values and values is not None else sdf.new_empty((0,)),
    )


def _usable(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None or t.numel() == 0 else t.contiguous()


def _setup_context(ctx, inputs, output):
    sdf, z, beta, values, offsets, last_delta, backend = inputs
    # the weights spare the fused backward most of its transcendentals
    ctx.save_for_backward(sdf, z, beta, values, offsets, output[3])
    ctx.last_delta, ctx.backend = last_delta, backend
    # results no loss reads (often the per-sample weights) get None, not zero-filled
    # tensors the fused backward would read and multiply
    ctx.set_materialize_grads(False)


def _backward(ctx, g_rendered, g_depth, g_opacity, g_weights):
    sdf, z, beta, values, offsets, weights = ctx.saved_tensors
    need_sdf, need_z, need_beta, need_values = ctx.needs_input_grad[:4]
    if not (need_sdf or need_z or need_beta or need_values):
        return (None,) * 7
    g_sdf, g_z, g_beta, g_values = torch.ops.npht.volume_composite_backward(
        _usable(g_rendered), _usable(g_depth), _usable(g_opacity), _usable(g_weights),
        sdf, z, beta, values, offsets, ctx.last_delta, ctx.backend,
        need_sdf, need_z, need_beta, need_values and values is not None, weights.detach(),
    )
    if need_beta and beta.shape[0] != g_beta.shape[0]:  # shared beta: sum the rays' shares
        g_beta = g_beta.sum(0, keepdim=True)
    return (
        g_sdf if need_sdf else None,
        g_z if need_z else None,
        g_beta if need_beta else None,
        g_values if need_values and values is not None else None,
        None, None, None,
    )


_composite_op.register_autograd(_backward, setup_context=_setup_context)


def _bwd_setup_context(ctx, inputs, output):
    (g_r, g_d, g_o, g_w, sdf, z, beta, values, offsets, last_delta, backend,
     need_sdf, need_z, need_beta, need_values, _weights) = inputs
    ctx.save_for_backward(g_r, g_d, g_o, g_w, sdf, z, beta, values, offsets)
    ctx.last_delta = last_delta
    ctx.needs = (need_sdf, need_z, need_beta, need_values)
    ctx.set_materialize_grads(False)


def _bwd_backward(ctx, gg_sdf, gg_z, gg_beta, gg_values):
    """Double backward through the PyTorch reference (:func:`_reference_double_backward`:
    differentiable again, so a third derivative is exact too)."""
    ggs = [g if need and g is not None and g.numel() > 0 else None
           for g, need in zip((gg_sdf, gg_z, gg_beta, gg_values), ctx.needs)]
    mask = ctx.needs_input_grad
    # inputs: g_r, g_d, g_o, g_w, sdf, z, beta, values, offsets, 6 non-tensors, weights
    # (the forward's weights are a hint: their dependence on sdf/z/beta is in the reference)
    if all(g is None for g in ggs) or not any(mask[:8]):
        return (None,) * 16
    grads = _reference_double_backward(ctx.saved_tensors, ggs, ctx.last_delta)
    return tuple(g if mask[i] else None for i, g in enumerate(grads)) + (None,) * 8


_composite_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# ---- torch.func (functorch) transforms ----------------------------------------------------
# As for npht.triplane_sample (npht/ops/triplane.py): torch.library's register_autograd
# wrapper is refused by functorch (pytorch/pytorch#168393, open in torch 2.13) and drops
# forward-mode tangents without a word. Under grad / vjp / jacrev / vmap the two ops run
# through the autograd.Functions below instead (same ops, same kernels). Rays are
# independent, so the ops' vmap rules (used by vmap, jacrev, vmap of a vjp function) turn V
# vmapped copies into V times as many rays of one launch: dense [V, R, S] -> [V*R, S],
# packed [V, M] -> [V*M] with copy v's offsets shifted by v*M. (Plain autograd's
# autograd.grad(..., is_grads_batched=True) batches with torch's legacy vmap prototype, which
# ignores register_vmap rules and loops over the copies.) The double backward is the
# reference's, as with plain autograd (taken by torch.func.vjp here, so that it composes with
# the transforms). Forward mode (jvp, jacfwd, dual tensors) has no fused formula, the
# kernels computing vector-Jacobian products only: there volume_composite evaluates the
# reference compositing.


def _fold(t: Optional[torch.Tensor], d: Optional[int], V: int) -> Optional[torch.Tensor]:
    """A per-ray or per-sample argument ``[N, ...]`` with the vmapped dimension at ``d``
    (None: shared by the V copies) -> the copies one after the other, ``[V*N, ...]``."""
    if t is None:
        return None
    t = t.movedim(d, 0) if d is not None else t.expand(V, *t.shape)
    return t.reshape(V * t.shape[1], *t.shape[2:]).contiguous()


def _fold_beta(beta: torch.Tensor, d: Optional[int], V: int, R: int) -> torch.Tensor:
    """beta ``[1]`` (shared) or ``[R]`` -> the folded rays' beta: unchanged when one value
    serves every ray of every copy, else ``[V*R]``."""
    if d is None and beta.shape[0] == 1:
        return beta
    b = beta.movedim(d, 0) if d is not None else beta.expand(V, *beta.shape)
    return b.expand(V, R).reshape(V * R).contiguous()


def _fold_offsets(offsets: Optional[torch.Tensor], d: Optional[int], V: int, M: int) -> Optional[torch.Tensor]:
    """CSR offsets ``[R + 1]`` over M samples -> those of the V copies' V*R rays over the
    V*M folded samples (copy v's offsets shifted by v*M)."""
    if offsets is None:
        return None
    o = offsets.movedim(d, 0) if d is not None else offsets.expand(V, *offsets.shape)
    shift = torch.arange(V, device=o.device, dtype=o.dtype)[:, None] * M
    return torch.cat([(o[:, :-1] + shift).reshape(-1), o.new_full((1,), V * M)])


def _fold_rays(V, in_dims, sdf, z, beta, values, offsets):
    """The ops' common arguments (sdf, z, beta, values, offsets) folded into one launch."""
    d_sdf, d_z, d_beta, d_values, d_offsets = in_dims
    sdf_f = _fold(sdf, d_sdf, V)
    offsets_f = _fold_offsets(offsets, d_offsets, V, sdf_f.shape[0] // V)
    R = sdf_f.shape[0] // V if offsets is None else (offsets_f.shape[0] - 1) // V
    return sdf_f, _fold(z, d_z, V), _fold_beta(beta, d_beta, V, R), _fold(values, d_values, V), offsets_f


def _unfold(t: torch.Tensor, V: int, wanted: bool = True):
    """A result of a folded launch ``[V*N, ...]`` -> ``([V, N, ...], 0)``; a not-wanted
    (empty) result stays unbatched."""
    if not wanted:
        return t, None
    return t.reshape(V, t.shape[0] // V, *t.shape[1:]), 0


@torch.library.register_vmap("npht::volume_composite")
def _composite_vmap(info, in_dims, sdf, z, beta, values, offsets, last_delta, backend):
    V = info.batch_size
    folded = _fold_rays(V, in_dims[:5], sdf, z, beta, values, offsets)
    outs = [_unfold(t, V) for t in torch.ops.npht.volume_composite(*folded, last_delta, backend)]
    return tuple(t for t, _ in outs), tuple(d for _, d in outs)


@torch.library.register_vmap("npht::volume_composite_backward")
def _composite_backward_vmap(info, in_dims, g_rendered, g_depth, g_opacity, g_weights, sdf, z, beta, values, offsets,
                             last_delta, backend, need_sdf, need_z, need_beta, need_values, weights=None):
    V = info.batch_size
    folded = _fold_rays(V, in_dims[4:9], sdf, z, beta, values, offsets)
    ups = [_fold(t, d, V) for t, d in zip((g_rendered, g_depth, g_opacity, g_weights), in_dims[:4])]
    hint = _fold(weights, in_dims[15] if len(in_dims) > 15 else None, V)
    grads = torch.ops.npht.volume_composite_backward(
        *ups, *folded, last_delta, backend, need_sdf, need_z, need_beta, need_values, hint)
    wanted = (need_sdf, need_z, need_beta, need_values and values is not None)
    outs = [_unfold(t, V, w) for t, w in zip(grads, wanted)]
    return tuple(t for t, _ in outs), tuple(d for _, d in outs)


def _reference_double_backward(saved, ggs, last_delta: float):
    """The derivative of the compositing's backward by the reference: the vjp of the
    reference's vjp (what plain autograd's :func:`_bwd_backward` computes), by torch.func so
    that it runs under the transforms (and is differentiable again). ``saved``: the
    backward op's upstream gradients (None where absent), sdf, z, beta, values, offsets;
    ``ggs``: the gradients of its results (None where absent; beta's per ray). Returns the
    gradients w.r.t. the four upstream gradients, sdf, z, beta and values."""
    from npht.reference.render import _ref_composite

    *ups, sdf, z, beta, values, offsets = saved
    R = _num_rays(sdf, offsets)
    present = [i for i, g in enumerate(ups) if g is not None]
    vals = () if values is None else (values,)

    def reference_vjp(ups_present, sdf, z, beta, vals):
        def composite(s, zz, b, vv):
            outs = _ref_composite(s, zz, b, vv[0] if vv else None, offsets, last_delta)
            return tuple(outs[i] for i in present)

        beta_ray = beta if beta.shape[0] == R else beta.expand(R)  # the op's beta gradient is per ray
        return torch.func.vjp(composite, sdf, z, beta_ray, vals)[1](ups_present)

    firsts, vjp_fn = torch.func.vjp(reference_vjp, tuple(ups[i] for i in present), sdf, z, beta, vals)
    gg_sdf, gg_z, gg_beta, gg_values = ggs
    cot = tuple(torch.zeros_like(f) if g is None else g for f, g in zip(firsts[:3], (gg_sdf, gg_z, gg_beta)))
    cot += (tuple(torch.zeros_like(f) if gg_values is None else gg_values for f in firsts[3]),)
    g_ups, g_sdf, g_z, g_beta, g_vals = vjp_fn(cot)
    out_ups = [None] * 4
    for i, g in zip(present, g_ups):
        out_ups[i] = g
    return (*out_ups, g_sdf, g_z, g_beta, g_vals[0] if g_vals else None)


class _CompositeFn(torch.autograd.Function):
    """``npht::volume_composite`` for torch.func transforms (reverse mode); its backward is
    :class:`_CompositeBackwardFn`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(sdf, z, beta, values, offsets, args):
        return torch.ops.npht.volume_composite(sdf, z, beta, values, offsets, *args.values)

    @staticmethod
    def setup_context(ctx, inputs, output):
        sdf, z, beta, values, offsets, args = inputs
        ctx.save_for_backward(sdf, z, beta, values, offsets, output[3])
        ctx.args = args  # last_delta, backend
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_rendered, g_depth, g_opacity, g_weights):
        sdf, z, beta, values, offsets, weights = ctx.saved_tensors
        need_sdf, need_z, need_beta, need_values = ctx.needs_input_grad[:4]
        need_values = need_values and values is not None
        ups = [_usable(g) for g in (g_rendered, g_depth, g_opacity, g_weights)]
        if all(g is None for g in ups) or not (need_sdf or need_z or need_beta or need_values):
            return (None,) * 6
        g_sdf, g_z, g_beta, g_values = _CompositeBackwardFn.apply(
            *ups, sdf, z, beta, values, offsets, weights.detach(),
            _backend.OpaqueArgs(ctx.args.values + (need_sdf, need_z, need_beta, need_values)))
        if need_beta and beta.shape[0] != g_beta.shape[0]:  # shared beta: sum the rays' shares
            g_beta = g_beta.sum(0, keepdim=True)
        return (g_sdf if need_sdf else None, g_z if need_z else None, g_beta if need_beta else None,
                g_values if need_values else None, None, None)


class _CompositeBackwardFn(torch.autograd.Function):
    """``npht::volume_composite_backward`` for torch.func transforms; its backward is the
    reference's double backward (:func:`_reference_double_backward`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g_rendered, g_depth, g_opacity, g_weights, sdf, z, beta, values, offsets, weights, args):
        last_delta, backend, need_sdf, need_z, need_beta, need_values = args.values
        return torch.ops.npht.volume_composite_backward(
            g_rendered, g_depth, g_opacity, g_weights, sdf, z, beta, values, offsets, last_delta, backend,
            need_sdf, need_z, need_beta, need_values, weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *tensors, _weights, args = inputs  # the weights are a hint: their dependence is in the reference
        ctx.save_for_backward(*tensors)
        ctx.last_delta = args.values[0]
        ctx.made = args.values[2:]
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg_sdf, gg_z, gg_beta, gg_values):
        ggs = [_usable(g) if made else None for g, made in zip((gg_sdf, gg_z, gg_beta, gg_values), ctx.made)]
        if all(g is None for g in ggs) or not any(ctx.needs_input_grad[:8]):
            return (None,) * 11
        grads = _reference_double_backward(ctx.saved_tensors, ggs, ctx.last_delta)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None,) * 3


_DTYPES = (torch.float32, torch.float64)


def _check(sdf, z, beta, values, ray_offsets):
    for name, t in (("sdf", sdf), ("z", z)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if sdf.dtype not in _DTYPES:
        raise TypeError(f"sdf must be float32 or float64, got {sdf.dtype}")
    packed = ray_offsets is not None
    if packed:
        if not isinstance(ray_offsets, torch.Tensor) or ray_offsets.dtype != torch.int64 or ray_offsets.dim() != 1 \
                or ray_offsets.numel() < 1:
            raise ValueError(
                "ray_offsets must be a 1-D int64 tensor [R + 1] (CSR offsets of the rays' samples), got "
                + (f"{ray_offsets.dtype} of shape {tuple(ray_offsets.shape)}"
                   if isinstance(ray_offsets, torch.Tensor) else type(ray_offsets).__name__)
            )
        if sdf.dim() != 1:
            raise ValueError(f"packed sdf must be [M] (with ray_offsets), got shape {tuple(sdf.shape)}")
        # a data-dependent check (one sync on a GPU); not while tracing, nor on meta tensors
        if not torch.compiler.is_compiling() and ray_offsets.device.type != "meta":
            first, last = int(ray_offsets[0]), int(ray_offsets[-1])
            falls = bool((ray_offsets[1:] < ray_offsets[:-1]).any())
            if first != 0 or last != sdf.shape[0] or falls:
                raise ValueError(
                    f"ray_offsets must rise from 0 to the sample count M = {sdf.shape[0]} (ray r's samples are "
                    f"[ray_offsets[r], ray_offsets[r+1])), got {first} ... {last}" + (" falling" if falls else ""))
    elif sdf.dim() != 2:
        raise ValueError(f"dense sdf must be [R, S] (or pass ray_offsets for [M]), got shape {tuple(sdf.shape)}")
    if z.shape != sdf.shape:
        raise ValueError(f"z must have the shape of sdf {tuple(sdf.shape)}, got {tuple(z.shape)}")
    if z.dtype != sdf.dtype:
        raise TypeError(f"z must have the dtype of sdf ({sdf.dtype}), got {z.dtype}")
    tensors = [("z", z)]
    if values is not None:
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor or None, got {type(values).__name__}")
        if values.dim() != sdf.dim() + 1 or values.shape[:-1] != sdf.shape:
            want = "[M, K]" if packed else "[R, S, K]"
            raise ValueError(f"values must be {want} matching sdf {tuple(sdf.shape)}, got {tuple(values.shape)}")
        if values.dtype != sdf.dtype:
            raise TypeError(f"values must have the dtype of sdf ({sdf.dtype}), got {values.dtype}")
        tensors.append(("values", values))
    if packed:
        tensors.append(("ray_offsets", ray_offsets))
    for name, t in tensors + [("beta", beta)]:
        if t.device != sdf.device:
            raise ValueError(f"{name} must be on the device of sdf ({sdf.device}), got {t.device}")


def volume_composite(
    sdf: torch.Tensor,
    z: torch.Tensor,
    beta: Union[float, torch.Tensor],
    values: Optional[torch.Tensor] = None,
    *,
    ray_offsets: Optional[torch.Tensor] = None,
    last_delta: float = LAST_DELTA,
    backend: str = "auto",
) -> CompositeResult:
    """Composite per-sample SDF values along rays with VolSDF's Laplace density.

    For samples ``z_0 < ... < z_{n-1}`` of a ray: ``delta_i = z_{i+1} - z_i`` (``last_delta``
    for the last, 1e10 as in VolSDF), ``sigma_i = (1/beta) Psi_beta(-sdf_i)``,
    ``w_i = (1 - exp(-sigma_i delta_i)) exp(-sum_{j<i} sigma_j delta_j)``; returns
    ``rendered = sum_i w_i v_i``, ``depth = sum_i w_i z_i``, ``opacity = sum_i w_i`` and the
    weights.

    Args:
        sdf, z: ``[R, S]`` (dense) or ``[M]`` with ``ray_offsets`` (packed); depths sorted
            per ray. float32 or float64 (sums run in float64 inside the kernels).
        beta: Laplace scale: a number, a 0-d / ``[1]`` tensor shared by all rays, or
            ``[R]`` per ray (e.g. ``LaplaceDensity.get_beta()``). Differentiable.
        values: per-sample channels ``[R, S, K]`` / ``[M, K]`` (normals, colour, ...), or None.
        ray_offsets: ``[R + 1]`` int64 CSR offsets: ray r owns samples
            ``ray_offsets[r] .. ray_offsets[r+1] - 1`` (empty rays allowed). They must be
            non-decreasing, from 0 to M: checked in eager mode (one device sync), not
            inside torch.compile; there the kernels clamp them to ``[0, M]`` so that no
            read goes out of bounds, but rays that overlap under decreasing offsets write
            the same samples' weights and gradients, in an undefined order.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    Gradients flow to ``sdf``, ``z``, ``beta`` and ``values`` (second derivatives too,
    through the reference). The fused kernels also serve torch.func's reverse-mode
    transforms, ``grad``, ``vjp``, ``jacrev`` and ``vmap`` (the vmapped copies folded into
    the rays of one launch, dense or packed), nested (``vmap(grad(f))``; ``grad`` of a loss
    on a gradient, whose second derivative comes from the reference as with plain
    autograd), and inside ``torch.compile``. Forward mode (``jvp``, ``jacfwd``,
    ``torch.func.hessian``, ``torch.autograd.forward_ad`` dual tensors) has no fused
    formula: there the result comes from the PyTorch reference (the same formula, unfused,
    differentiable in every mode).
    Non-finite ``values`` (or upstream gradients) on a ray: the fused backends' backward
    forms the sums over the samples behind each one as a ray total minus a prefix, so the
    ``sdf`` and ``z`` gradients of every sample of that ray but the last become NaN; the
    reference's reversed cumulative sums keep those behind the bad sample
    finite (the loss is NaN either way). Returns a :class:`CompositeResult`.
    """
    _check(sdf, z, beta if isinstance(beta, torch.Tensor) else sdf, values, ray_offsets)
    R = _num_rays(sdf, ray_offsets)
    if not isinstance(beta, torch.Tensor):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < float(beta) < math.inf:
            raise ValueError(f"beta must be a positive finite number or a tensor, got {beta!r}")
        beta = torch.tensor([float(beta)], dtype=sdf.dtype, device=sdf.device)
    if isinstance(last_delta, bool) or not isinstance(last_delta, numbers.Real) or not float(last_delta) >= 0:
        raise ValueError(f"last_delta must be a non-negative number, got {last_delta!r}")
    if beta.dtype != sdf.dtype:
        raise TypeError(f"beta must have the dtype of sdf ({sdf.dtype}), got {beta.dtype}")
    if beta.dim() == 0:
        beta = beta.reshape(1)
    if beta.dim() != 1 or beta.shape[0] not in (1, R):
        raise ValueError(f"beta must be a number, 0-d, [1] or [R] = [{R}], got shape {tuple(beta.shape)}")
    backend = _backend.resolve_backend(backend, sdf.device)
    if _backend.under_transform(sdf, z, beta, values):
        # torch.func / forward-mode AD: the registered op's autograd is not usable there
        # (pytorch/pytorch#168393)
        if _backend.forward_mode(sdf, z, beta, values):  # no fused forward-mode formula: the reference's
            from npht.reference.render import _ref_composite

            return CompositeResult(*_ref_composite(sdf, z, beta, values, ray_offsets, float(last_delta)))
        return CompositeResult(*_CompositeFn.apply(
            sdf.contiguous(), z.contiguous(), beta.contiguous(), None if values is None else values.contiguous(),
            None if ray_offsets is None else ray_offsets.contiguous(),
            _backend.OpaqueArgs((float(last_delta), backend))))
    out = torch.ops.npht.volume_composite(
        sdf.contiguous(), z.contiguous(), beta.contiguous(),
        None if values is None else values.contiguous(),
        None if ray_offsets is None else ray_offsets.contiguous(),
        float(last_delta), backend,
    )
    return CompositeResult(*out)
