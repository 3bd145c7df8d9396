"""``npht.volume_composite``: fused VolSDF compositing (Laplace density, transmittance,
weights, weighted sums of per-sample values, depth and opacity), forward and backward in
one pass per ray, dense ``[R, S]`` or packed (CSR ray offsets) layout.

Ops: ``npht::volume_composite`` (forward) whose backward is
``npht::volume_composite_backward`` (the fused kernels). The backward's own derivative
(double backward, rarely needed: compositing is first-order in the renderer, the normals'
double backward happens in the SDF) is computed by autograd through the PyTorch reference,
so second derivatives are exact but not fused.
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
    """Double backward by autograd through the reference compositing."""
    from npht.reference.render import _ref_composite

    g_r, g_d, g_o, g_w, sdf, z, beta, values, offsets = ctx.saved_tensors
    R = _num_rays(sdf, offsets)
    ups = [g_r, g_d, g_o, g_w]
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in ups + [sdf, z, beta, values]]
        gl = leaves[:4]
        s_, z_, b_, v_ = leaves[4:]
        b_ray = b_.reshape(-1).expand(R) if b_.shape[0] != R else b_.reshape(-1)
        outs = _ref_composite(s_, z_, b_ray, v_, offsets, ctx.last_delta)
        pairs = [(o, g) for o, g in zip(outs, gl) if g is not None]
        firsts = [s_, z_, b_ray] + ([v_] if v_ is not None else [])
        if pairs:
            grads = torch.autograd.grad([o for o, _ in pairs], firsts, [g for _, g in pairs],
                                        create_graph=True, allow_unused=True)
        else:
            grads = [None] * len(firsts)
        ggs = [gg_sdf, gg_z, gg_beta] + ([gg_values] if v_ is not None else [])
        terms = [(g, gg) for g, gg, need in zip(grads, ggs, ctx.needs)
                 if g is not None and gg is not None and gg.numel() > 0 and need]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        if terms:
            second = torch.autograd.grad([g for g, _ in terms], wanted, [gg for _, gg in terms],
                                         allow_unused=True)
        else:
            second = [None] * len(wanted)
    result = dict(zip([id(t) for t in wanted], second))
    out = [None if t is None else result.get(id(t)) for t in leaves]
    mask = ctx.needs_input_grad
    # inputs: g_r, g_d, g_o, g_w, sdf, z, beta, values, offsets, 6 non-tensors, weights
    # (the forward's weights are a hint: their dependence on sdf/z/beta is in the above)
    grads_in = out[:8] + [None]
    grads_in = [g if (i < len(mask) and mask[i]) else None for i, g in enumerate(grads_in)]
    return tuple(grads_in) + (None,) * 7


_composite_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


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
    through the reference). Under torch.func transforms (``grad``, ``vjp``, ``jacrev``,
    ``vmap``, ``jvp``, ``jacfwd``) and forward-mode AD dual tensors the result comes from
    the PyTorch reference (the same formula, unfused, differentiable in every mode).
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
        # (pytorch/pytorch#168393); the same formula in PyTorch ops is, in every mode
        from npht.reference.render import _ref_composite

        return CompositeResult(*_ref_composite(sdf, z, beta, values, ray_offsets, float(last_delta)))
    out = torch.ops.npht.volume_composite(
        sdf.contiguous(), z.contiguous(), beta.contiguous(),
        None if values is None else values.contiguous(),
        None if ray_offsets is None else ray_offsets.contiguous(),
        float(last_delta), backend,
    )
    return CompositeResult(*out)
