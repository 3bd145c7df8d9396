"""The per-ray math of VolSDF's error-bound sampler (``npht.render.ErrorBoundSampler``) as
fused ops, registered with torch.library: ``npht::eb_bisect_beta``, ``npht::eb_upsample``
and ``npht::eb_merge``. Each takes the backend name and calls the raw kernels of that
backend (contract in csrc/bindings.cpp; reference: ``npht.reference.sampler.eb_*``).

The sampler runs without grad (its samples are depths, not differentiated), so these ops
have no autograd formula: their outputs never require grad. Under ``torch.vmap`` the
vmapped dimension is folded into the rays: one launch for all the sets of rays.

Numerics: the kernels compute in float64 and round results to the input dtype; the
bisection keeps its interval ends in the input dtype like the reference. Outputs agree
with the reference to rounding, except where a decision of the reference sits within
rounding of its threshold: an error bound within rounding of eps (a bisection step goes
the other way), or a quantile within rounding of a CDF entry (the sample lands in the
neighbouring bin; typically u = 1 when the last bins have almost no mass).
"""

from __future__ import annotations

from typing import Tuple, Union

import torch

from . import _backend

__all__ = ["eb_bisect_beta", "eb_upsample", "eb_merge", "PDF_MODES"]

#: eb_upsample's pdf over the intervals: the opacity error bound, or the rendering weights.
PDF_MODES = {"bound": 0, "weights": 1}
_DTYPES = (torch.float32, torch.float64)


# ---- registered ops (tensors reaching them are checked and contiguous) -------------------


@torch.library.custom_op("npht::eb_bisect_beta", mutates_args=())
def _eb_bisect_beta_op(z: torch.Tensor, sdf: torch.Tensor, beta0: float, beta_hi: torch.Tensor,
                       eps: float, iters: int, backend: str) -> torch.Tensor:
    return _backend.kernels(backend, "sampler").eb_bisect_beta(z, sdf, beta0, beta_hi, eps, iters)


@_eb_bisect_beta_op.register_fake
def _(z, sdf, beta0, beta_hi, eps, iters, backend):
    return z.new_empty((z.shape[0],))


@torch.library.custom_op("npht::eb_upsample", mutates_args=())
def _eb_upsample_op(z: torch.Tensor, sdf: torch.Tensor, beta: torch.Tensor, u: torch.Tensor,
                    mode: int, add_tiny: float, backend: str) -> torch.Tensor:
    return _backend.kernels(backend, "sampler").eb_upsample(z, sdf, beta, u, mode, add_tiny)


@_eb_upsample_op.register_fake
def _(z, sdf, beta, u, mode, add_tiny, backend):
    return z.new_empty(u.shape)


@torch.library.custom_op("npht::eb_merge", mutates_args=())
def _eb_merge_op(z: torch.Tensor, samples: torch.Tensor,
                 backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    merged, order = _backend.kernels(backend, "sampler").eb_merge(z, samples)
    return merged, order


@_eb_merge_op.register_fake
def _(z, samples, backend):
    shape = (z.shape[0], z.shape[1] + samples.shape[1])
    return z.new_empty(shape), z.new_empty(shape, dtype=torch.int64)


# ---- vmap: the ops work ray by ray, so a vmapped dimension folds into the rays ----------


def _fold_rays(info, in_dims, args):
    """The op's arguments with the vmapped dimension folded into the rays: a tensor with a
    vmapped dim ``[.., V, ..]`` becomes ``[V * R, ...]``, one without it is repeated for each
    of the V slices; other arguments unchanged. Returns ``(args, R)``."""
    V, R, out = info.batch_size, None, []
    for a, d in zip(args, in_dims):
        if isinstance(a, torch.Tensor):
            a = a.movedim(d, 0) if d is not None else a.expand(V, *a.shape)
            R = a.shape[1]
            a = a.reshape(V * R, *a.shape[2:]).contiguous()
        out.append(a)
    return out, R


def _unfold(t: torch.Tensor, V: int, R: int) -> torch.Tensor:
    return t.reshape(V, R, *t.shape[1:])


@torch.library.register_vmap("npht::eb_bisect_beta")
def _(info, in_dims, *args):
    folded, R = _fold_rays(info, in_dims, args)
    return _unfold(torch.ops.npht.eb_bisect_beta(*folded), info.batch_size, R), 0


@torch.library.register_vmap("npht::eb_upsample")
def _(info, in_dims, *args):
    folded, R = _fold_rays(info, in_dims, args)
    return _unfold(torch.ops.npht.eb_upsample(*folded), info.batch_size, R), 0


@torch.library.register_vmap("npht::eb_merge")
def _(info, in_dims, *args):
    folded, R = _fold_rays(info, in_dims, args)
    merged, order = torch.ops.npht.eb_merge(*folded)
    return (_unfold(merged, info.batch_size, R), _unfold(order, info.batch_size, R)), (0, 0)


# ---- input validation --------------------------------------------------------------------


def _tensor(x, name: str):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    return x


def _same(x: torch.Tensor, name: str, z: torch.Tensor, shape: tuple, layout: str):
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must be {layout} = {shape}, got shape {tuple(x.shape)}")
    if x.dtype != z.dtype:
        raise TypeError(f"{name} must have the dtype of z ({z.dtype}), got {x.dtype}")
    if x.device != z.device:
        raise ValueError(f"{name} must be on the device of z ({z.device}), got {x.device}")


def _rays(z, sdf):
    _tensor(z, "z")
    _tensor(sdf, "sdf")
    if z.dim() != 2 or z.shape[1] < 2:
        raise ValueError(f"z must be [R, n] with n >= 2 samples per ray, got shape {tuple(z.shape)}")
    _same(sdf, "sdf", z, tuple(z.shape), "[R, n]")
    return z.shape[0]


def _number(x, name: str, positive: bool = False) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if positive and not x > 0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    return float(x)


# ---- public functions --------------------------------------------------------------------


def eb_bisect_beta(z: torch.Tensor, sdf: torch.Tensor, beta0, beta_hi: torch.Tensor, eps: float,
                   iters: int, *, backend: str = "auto") -> torch.Tensor:
    """The smallest beta (per ray) whose opacity error bound is <= ``eps``, by bisection.

    Args:
        z, sdf: ``[R, n]`` depths (rows sorted ascending, n >= 2) and the SDF there;
            float32 or float64, one dtype and device for all tensors.
        beta0: the lower end (the density's current beta), a number or one-element tensor.
        beta_hi: ``[R]`` the upper end per ray (a beta meeting the bound, e.g. VolSDF's
            Lemma 2 ``initial_beta`` or the previous round's result).
        eps: the error bound to meet; iters: bisection steps (>= 0).
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    Returns ``beta [R]``: ``beta0`` where the bound already holds at ``beta0``, else the
    upper end after ``iters`` bisection steps in ``[beta0, beta_hi]``
    (``npht.reference.sampler.bisect_beta``). No autograd (the sampler runs without grad).
    """
    R = _rays(z, sdf)
    _tensor(beta_hi, "beta_hi")
    _same(beta_hi, "beta_hi", z, (R,), "[R]")
    beta0 = _number(beta0, "beta0", positive=True)
    eps = _number(eps, "eps", positive=True)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    backend = _backend.resolve_backend(backend, z.device)
    return torch.ops.npht.eb_bisect_beta(z.contiguous(), sdf.contiguous(), beta0,
                                         beta_hi.contiguous(), eps, iters, backend)


def eb_upsample(z: torch.Tensor, sdf: torch.Tensor, beta: torch.Tensor, u: torch.Tensor,
                mode: Union[str, int] = "bound", add_tiny: float = 0.0, *,
                backend: str = "auto") -> torch.Tensor:
    """Inverse-CDF sampling of a per-interval pdf along each ray.

    Args:
        z, sdf: ``[R, n]`` depths (rows sorted, n >= 2) and SDF; float32 or float64.
        beta: ``[R]`` the Laplace density's beta per ray.
        u: ``[R, k]`` quantiles in [0, 1] (sorted or not).
        mode: the pdf over the n - 1 intervals: ``"bound"`` (0) the opacity error bound per
            interval (VolSDF's upsampling rounds), ``"weights"`` (1) the rendering weights
            of the first n - 1 samples (its final samples).
        add_tiny: added to the pdf before normalising (ErrorBoundSampler: ``add_tiny`` for
            the bound, 1e-5 for the weights). A ray whose pdf is exactly 0 everywhere (with
            add_tiny 0: a zero-length ray, or one whose bound underflows far from the
            surface) samples every interval with the same mass, add_tiny's limit.

    Returns ``samples [R, k]``, as ``npht.reference.sampler.sample_pdf``. No autograd.
    """
    R = _rays(z, sdf)
    _tensor(beta, "beta")
    _same(beta, "beta", z, (R,), "[R]")
    _tensor(u, "u")
    if u.dim() != 2:
        raise ValueError(f"u must be [R, k], got shape {tuple(u.shape)}")
    _same(u, "u", z, (R, u.shape[1]), "[R, k]")
    if isinstance(mode, str):
        if mode not in PDF_MODES:
            raise ValueError(f"mode must be one of {tuple(PDF_MODES)} (or 0, 1), got {mode!r}")
        mode = PDF_MODES[mode]
    elif isinstance(mode, bool) or mode not in (0, 1):
        raise ValueError(f"mode must be one of {tuple(PDF_MODES)} (or 0, 1), got {mode!r}")
    add_tiny = _number(add_tiny, "add_tiny")
    if add_tiny < 0:
        raise ValueError(f"add_tiny must be >= 0, got {add_tiny!r}")
    backend = _backend.resolve_backend(backend, z.device)
    return torch.ops.npht.eb_upsample(z.contiguous(), sdf.contiguous(), beta.contiguous(),
                                      u.contiguous(), int(mode), add_tiny, backend)


def eb_merge(z: torch.Tensor, samples: torch.Tensor, *,
             backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge two row-wise sorted depth lists.

    Args:
        z: ``[R, n]``, samples: ``[R, k]``, each row sorted ascending (not checked), NaN-free;
            float32 or float64, same dtype and device.

    Returns ``(merged [R, n + k], order [R, n + k] int64)``: ``merged`` sorted and
    ``order`` the index of each merged element in ``cat([z, samples], -1)``, what
    ``torch.sort(torch.cat([z, samples], -1), -1)`` returns. Equal values may come in either
    order: the compiled and Triton kernels put z's first, the reference (torch.sort) either
    way; ``merged`` is the same. No autograd.
    """
    _tensor(z, "z")
    _tensor(samples, "samples")
    if z.dim() != 2:
        raise ValueError(f"z must be [R, n], got shape {tuple(z.shape)}")
    if samples.dim() != 2:
        raise ValueError(f"samples must be [R, k], got shape {tuple(samples.shape)}")
    _same(samples, "samples", z, (z.shape[0], samples.shape[1]), "[R, k]")
    backend = _backend.resolve_backend(backend, z.device)
    return torch.ops.npht.eb_merge(z.contiguous(), samples.contiguous(), backend)
