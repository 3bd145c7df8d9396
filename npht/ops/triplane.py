"""``npht.triplane_sample``: tri-plane bilinear feature sampling with exact first and
second derivatives, registered with torch.library.

Three custom ops form the chain that makes double backward work:
``npht::triplane_sample`` (forward) has as backward ``npht::triplane_sample_backward``,
whose own backward is ``npht::triplane_sample_double_backward``. Each takes the backend
name and calls the raw kernels of that backend (see csrc/bindings.cpp for the contract).
Under torch.func transforms and forward-mode AD the same ops run through autograd.Functions
with batching rules (below the registered ops' autograd).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

from . import _backend

__all__ = ["triplane_sample", "resolve_projection", "projection_from_plane_axes", "PROJECTIONS"]

_AGGREGATES = {"sum": 0, "mean": 1, "concat": 2}
_PADDINGS = {"zeros": 0, "border": 1}
_PLANE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Named projections: for plane k, the point coordinates read as the plane's (x, y).
PROJECTIONS = {
    # npht / the thesis: planes xy, yz, xz
    "npht": ((0, 1), (1, 2), (0, 2)),
    # EG3D's generate_planes(): planes xy, xz, zx
    "eg3d": ((0, 1), (0, 2), (2, 0)),
}

Projection = Union[str, Sequence[Sequence[int]]]


def resolve_projection(projection: Projection):
    """A projection name or three (u, v) axis pairs -> ((u0, v0), (u1, v1), (u2, v2))."""
    if isinstance(projection, str):
        if projection not in PROJECTIONS:
            raise ValueError(
                f"projection must be one of {tuple(PROJECTIONS)} or three (u, v) axis pairs, "
                f"got {projection!r}"
            )
        return PROJECTIONS[projection]
    try:
        pairs = tuple(tuple(projection[k]) for k in range(len(projection)))
    except (TypeError, ValueError, KeyError, IndexError):
        pairs = ()
    # axes are ints 0, 1, 2 (numpy / 0-d tensor ints too); 0.9 is not axis 0, nor True axis 1
    ok = len(pairs) == 3 and all(len(pair) == 2 for pair in pairs) and all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) or (
            isinstance(a, torch.Tensor) and a.dim() == 0 and not a.is_floating_point() and a.dtype != torch.bool)
        for pair in pairs for a in pair)
    pairs = tuple((int(u), int(v)) for u, v in pairs) if ok else ()
    if len(pairs) != 3 or any(a not in (0, 1, 2) for pair in pairs for a in pair):
        raise ValueError(
            "projection must be a name or three (u, v) pairs of axes in {0, 1, 2}, "
            f"got {projection!r}"
        )
    return pairs


def projection_from_plane_axes(plane_axes: torch.Tensor):
    """Convert EG3D-style ``plane_axes`` ([3, 3, 3] axis-permutation matrices, as from
    EG3D's ``generate_planes()``) to npht's axis pairs. EG3D projects a point onto plane
    k as ``(p @ inv(plane_axes[k]))[:2]``; for a permutation matrix that reads the axes
    where rows 0 and 1 of ``plane_axes[k]`` are 1."""
    axes = torch.as_tensor(plane_axes).detach().to("cpu", torch.float64)
    if axes.shape != (3, 3, 3):
        raise ValueError(f"plane_axes must be [3, 3, 3], got {tuple(axes.shape)}")
    pairs = []
    for k in range(3):
        m = axes[k]
        is_perm = torch.equal(m @ m.T, torch.eye(3, dtype=m.dtype)) and bool(((m == 0) | (m == 1)).all())
        if not is_perm:
            raise ValueError(
                f"plane_axes[{k}] must be a permutation matrix (axis-aligned plane), got {m.tolist()}"
            )
        pairs.append((int(m[0].argmax()), int(m[1].argmax())))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------
# Registered ops. Tensors reaching them are contiguous: planes [B, 3, H, W, C], points
# [B, N, 3] in the accumulation dtype.


def _flat_axes(axes: Sequence[int]) -> list:
    return [int(a) for a in axes]


@torch.library.custom_op("npht::triplane_sample", mutates_args=())
def _triplane_sample_op(
    planes: torch.Tensor,
    points: torch.Tensor,
    axes: Sequence[int],
    scale: float,
    aggregate: int,
    padding: int,
    align_corners: bool,
    backend: str,
) -> torch.Tensor:
    return _backend.kernels(backend).triplane_fwd(
        planes, points, _flat_axes(axes), scale, aggregate, padding, align_corners
    )


@_triplane_sample_op.register_fake
def _(planes, points, axes, scale, aggregate, padding, align_corners, backend):
    C = planes.shape[-1] * (3 if aggregate == _AGGREGATES["concat"] else 1)
    return planes.new_empty((points.shape[0], points.shape[1], C))


@torch.library.custom_op("npht::triplane_sample_backward", mutates_args=())
def _triplane_backward_op(
    grad_out: torch.Tensor,
    planes: torch.Tensor,
    points: torch.Tensor,
    axes: Sequence[int],
    scale: float,
    aggregate: int,
    padding: int,
    align_corners: bool,
    backend: str,
    need_planes: bool,
    need_points: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    # contiguous: autograd and functorch may hand over materialised zeros as expanded views
    gp, gx = _backend.kernels(backend).triplane_bwd(
        grad_out.contiguous(), planes.contiguous(), points.contiguous(), _flat_axes(axes), scale, aggregate,
        padding, align_corners, need_planes, need_points,
    )
    return gp, gx


@_triplane_backward_op.register_fake
def _(grad_out, planes, points, axes, scale, aggregate, padding, align_corners, backend,
      need_planes, need_points):
    gp = planes.new_empty(planes.shape) if need_planes else planes.new_empty(0)
    gx = points.new_empty(points.shape) if need_points else points.new_empty(0)
    return gp, gx


@torch.library.custom_op("npht::triplane_sample_double_backward", mutates_args=())
def _triplane_double_backward_op(
    gg_planes: Optional[torch.Tensor],
    gg_points: Optional[torch.Tensor],
    grad_out: torch.Tensor,
    planes: torch.Tensor,
    points: torch.Tensor,
    axes: Sequence[int],
    scale: float,
    aggregate: int,
    padding: int,
    align_corners: bool,
    backend: str,
    need_grad_out: bool,
    need_planes: bool,
    need_points: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g_go, g_p, g_x = _backend.kernels(backend).triplane_bwd2(
        _contiguous(gg_planes), _contiguous(gg_points), grad_out.contiguous(), planes.contiguous(),
        points.contiguous(), _flat_axes(axes), scale, aggregate, padding, align_corners, need_grad_out,
        need_planes, need_points,
    )
    return g_go, g_p, g_x


@_triplane_double_backward_op.register_fake
def _(gg_planes, gg_points, grad_out, planes, points, axes, scale, aggregate, padding,
      align_corners, backend, need_grad_out, need_planes, need_points):
    g_go = grad_out.new_empty(grad_out.shape) if need_grad_out else grad_out.new_empty(0)
    g_p = planes.new_empty(planes.shape) if need_planes else planes.new_empty(0)
    g_x = points.new_empty(points.shape) if need_points else points.new_empty(0)
    return g_go, g_p, g_x


# ---- autograd: forward -> backward -> double backward ---------------------------------

_NOT_IMPLEMENTED = (
    "npht.triplane_sample: this derivative is not implemented. The op is differentiable twice in reverse mode "
    "(grad / vjp / jacrev of grad / vjp / jacrev, e.g. torch.func.jacrev(torch.func.jacrev(f)) for a Hessian), "
    "once in forward mode (jvp, jacfwd), and forward over reverse (torch.func.hessian) or reverse over forward "
    "(jacrev(jacfwd(f))); forward over forward (jacfwd(jacfwd(f))) and a third derivative are not")


def _fwd_setup_context(ctx, inputs, output):
    planes, points, *args = inputs
    ctx.save_for_backward(planes, points)
    ctx.args = tuple(args)  # axes, scale, aggregate, padding, align_corners, backend


def _wanted(ctx, i: int) -> bool:
    """Whether the running backward uses input ``i``'s gradient. ``needs_input_grad`` says
    only whether it may (the input requires grad): ``torch.autograd.grad(sdf, points,
    create_graph=True)`` for normals would still make the planes' gradient, a scatter over
    every sample, then discard it. The engine knows which nodes this call executes; where
    it cannot be asked (tracing, compiled autograd, a leaf that ``autograd.grad`` captures,
    which it refuses to answer for) the answer is yes."""
    if not ctx.needs_input_grad[i]:
        return False
    try:
        if torch.compiler.is_compiling():
            return True
        node = ctx.next_functions[i][0]
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except Exception:  # noqa: BLE001 -- any doubt: compute the gradient
        return True


def _fwd_backward(ctx, grad):
    planes, points = ctx.saved_tensors
    need_planes, need_points = _wanted(ctx, 0), _wanted(ctx, 1)
    if not (need_planes or need_points):
        return (None,) * 8
    gp, gx = torch.ops.npht.triplane_sample_backward(
        grad.contiguous(), planes, points, *ctx.args, need_planes, need_points
    )
    return (gp if need_planes else None, gx if need_points else None) + (None,) * 6


_triplane_sample_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def _bwd_setup_context(ctx, inputs, output):
    grad_out, planes, points, *args = inputs
    ctx.save_for_backward(grad_out, planes, points)
    # an output nobody reads (the planes' gradient, when only the points' one feeds a
    # loss) gets None, not a zero-filled planes-sized tensor the double backward would read
    ctx.set_materialize_grads(False)
    ctx.args = tuple(args[:6])  # axes, scale, aggregate, padding, align_corners, backend


def _usable(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # Gradients of unused (or empty, not-needed) outputs arrive as None or empty.
    return None if t is None or t.numel() == 0 else t.contiguous()


def _bwd_backward(ctx, gg_planes, gg_points):
    grad_out, planes, points = ctx.saved_tensors
    gg_planes, gg_points = _usable(gg_planes), _usable(gg_points)
    need_go, need_planes, need_points = _wanted(ctx, 0), _wanted(ctx, 1), _wanted(ctx, 2)
    # grad_planes does not depend on planes, so only gg_points reaches the planes.
    need_planes = need_planes and gg_points is not None
    if gg_planes is None and gg_points is None or not (need_go or need_planes or need_points):
        return (None,) * 11
    g_go, g_p, g_x = torch.ops.npht.triplane_sample_double_backward(
        gg_planes, gg_points, grad_out, planes, points, *ctx.args, need_go, need_planes, need_points
    )
    return (
        g_go if need_go else None,
        g_p if need_planes else None,
        g_x if need_points else None,
    ) + (None,) * 8


_triplane_backward_op.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


def _no_third_derivative(ctx, *grads):
    raise NotImplementedError(_NOT_IMPLEMENTED)


# a third derivative: a clear error (without an autograd formula torch's own error would
# suggest registering one)
_triplane_double_backward_op.register_autograd(_no_third_derivative, setup_context=lambda ctx, inputs, output: None)


# ---- torch.func (functorch) transforms ----------------------------------------------------
# torch.library's register_autograd wrapper is a legacy autograd.Function that functorch
# refuses (pytorch/pytorch#168393, open in torch 2.13): under torch.func.grad / vjp / jacrev
# the op would raise, and forward-mode AD (dual tensors) would lose its tangents without a
# word. While a transform is active or an input is a dual tensor, triplane_sample goes
# through the autograd.Functions below instead (same three ops, same kernels); their vmap
# rules come from the ops' own rules (register_vmap: the vmapped dimension folded into the
# points or into the batch, one kernel launch whatever its size). Plain autograd's batched
# gradients (``autograd.grad(..., is_grads_batched=True)``) batch with torch's legacy vmap
# prototype, which does not see these rules: correct, one launch per copy.


def _fold_vmap(info, in_dims, planes_like, points_like, planes_out: bool):
    """Fold the vmapped dimension of the ops' arguments into one launch.

    ``planes_like`` / ``points_like``: ``(tensor or None, in_dim)`` of the arguments shaped
    like the planes ``[B, 3, H, W, C]`` / like the points ``[B, N, ...]``. When no
    planes-shaped argument is batched and no planes-shaped result is wanted, the V copies
    are V times as many points of the same planes (``[B, V*N, ...]``, ``mode="points"``);
    otherwise V*B batches (``mode="batch"``: unbatched arguments expanded). Returns
    ``(mode, planes_like, points_like)`` folded."""
    V = info.batch_size
    by_points = not planes_out and all(t is None or d is None for t, d in planes_like)
    if by_points:
        pts = []
        for t, d in points_like:
            if t is None:
                pts.append(None)
                continue
            t = t.movedim(d, 1) if d is not None else t.unsqueeze(1).expand(t.shape[0], V, *t.shape[1:])
            pts.append(t.reshape(t.shape[0], V * t.shape[2], *t.shape[3:]).contiguous())
        return "points", [t for t, _ in planes_like], pts

    def batch(t, d):
        if t is None:
            return None
        t = t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(V, *t.shape)
        return t.reshape(V * t.shape[1], *t.shape[2:]).contiguous()

    return "batch", [batch(t, d) for t, d in planes_like], [batch(t, d) for t, d in points_like]


def _unfold(mode: str, V: int, t: torch.Tensor, wanted: bool = True):
    """A result of a folded launch -> (tensor, out_dim); a not-wanted (empty) result stays
    unbatched."""
    if not wanted:
        return t, None
    if mode == "points":  # [B, V*N, ...] -> [B, V, N, ...]
        return t.reshape(t.shape[0], V, t.shape[1] // V, *t.shape[2:]), 1
    return t.reshape(V, t.shape[0] // V, *t.shape[1:]), 0


@torch.library.register_vmap("npht::triplane_sample")
def _fwd_vmap(info, in_dims, planes, points, *args):
    mode, (planes,), (points,) = _fold_vmap(info, in_dims, [(planes, in_dims[0])], [(points, in_dims[1])], False)
    return _unfold(mode, info.batch_size, torch.ops.npht.triplane_sample(planes, points, *args))


@torch.library.register_vmap("npht::triplane_sample_backward")
def _bwd_vmap(info, in_dims, grad_out, planes, points, axes, scale, aggregate, padding, align_corners, backend,
              need_planes, need_points):
    mode, (planes,), (grad_out, points) = _fold_vmap(
        info, in_dims, [(planes, in_dims[1])], [(grad_out, in_dims[0]), (points, in_dims[2])], need_planes)
    gp, gx = torch.ops.npht.triplane_sample_backward(
        grad_out, planes, points, axes, scale, aggregate, padding, align_corners, backend, need_planes, need_points)
    (gp, dp), (gx, dx) = _unfold(mode, info.batch_size, gp, need_planes), _unfold(mode, info.batch_size, gx, need_points)
    return (gp, gx), (dp, dx)


@torch.library.register_vmap("npht::triplane_sample_double_backward")
def _bwd2_vmap(info, in_dims, gg_planes, gg_points, grad_out, planes, points, axes, scale, aggregate, padding,
               align_corners, backend, need_grad_out, need_planes, need_points):
    mode, (gg_planes, planes), (gg_points, grad_out, points) = _fold_vmap(
        info, in_dims, [(gg_planes, in_dims[0]), (planes, in_dims[3])],
        [(gg_points, in_dims[1]), (grad_out, in_dims[2]), (points, in_dims[4])], need_planes)
    g_go, g_p, g_x = torch.ops.npht.triplane_sample_double_backward(
        gg_planes, gg_points, grad_out, planes, points, axes, scale, aggregate, padding, align_corners, backend,
        need_grad_out, need_planes, need_points)
    V = info.batch_size
    outs = [_unfold(mode, V, t, w) for t, w in ((g_go, need_grad_out), (g_p, need_planes), (g_x, need_points))]
    return tuple(t for t, _ in outs), tuple(d for _, d in outs)


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


class _SampleFn(torch.autograd.Function):
    """``npht::triplane_sample`` for torch.func transforms (reverse mode; no ``jvp``, which
    torch.compile cannot trace)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(planes, points, args):
        return torch.ops.npht.triplane_sample(planes, points, *args.values)

    @staticmethod
    def setup_context(ctx, inputs, output):
        planes, points, args = inputs
        ctx.save_for_backward(planes, points)
        ctx.args = args

    @staticmethod
    def backward(ctx, grad):
        planes, points = ctx.saved_tensors
        need_planes, need_points = ctx.needs_input_grad[:2]
        if not (need_planes or need_points):
            return None, None, None
        # forward mode over this backward (torch.func.hessian = jacfwd(jacrev(f))): the class with a jvp
        gp, gx = _backward_fn(grad, planes, points).apply(grad.contiguous(), planes, points, ctx.args,
                                                          need_planes, need_points)
        return gp if need_planes else None, gx if need_points else None, None


class _SampleForwardModeFn(_SampleFn):
    """:class:`_SampleFn` with forward mode (jvp, jacfwd, dual tensors)."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _SampleFn.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])
        ctx.out_shape = output.shape

    @staticmethod
    def jvp(ctx, t_planes, t_points, _):
        # one launch: the double backward's gradient w.r.t. grad_out is
        # d(<gg_planes, J_planes^T go> + <gg_points, J_points^T go>) / d go
        # = J_planes gg_planes + J_points gg_points, the JVP for tangents (gg_planes, gg_points)
        planes, points = ctx.saved_tensors
        return _SampleJvpFn.apply(_contiguous(t_planes), _contiguous(t_points), planes, points, ctx.args,
                                  planes.new_zeros(ctx.out_shape))


class _SampleJvpFn(torch.autograd.Function):
    """The forward's JVP ``J_planes t_planes + J_points t_points`` as a Function of the
    tangents, the planes and the points, so that reverse mode can go through it (reverse
    over forward: ``jacrev(jacfwd(f))``, ``grad`` of a ``jvp``). Forward: one launch of the
    double backward (its gradient w.r.t. grad_out is this JVP). Backward for a cotangent
    ``c``: the tangents' gradients are the backward's (``J^T c``, one launch); the planes'
    and points' are the double backward's for gg = the tangents and grad_out = ``c`` (one
    launch: ``d<c, J t>/d(planes, points)``, the mixed and second derivatives)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(t_planes, t_points, planes, points, args, zeros):
        # zeros: grad_out, made by the caller (at the transforms' level, so batched as they need)
        g_go, _, _ = torch.ops.npht.triplane_sample_double_backward(
            t_planes, t_points, zeros, planes, points, *args.values, True, False, False)
        return g_go

    @staticmethod
    def setup_context(ctx, inputs, output):
        t_planes, t_points, planes, points, args, _ = inputs
        ctx.save_for_backward(t_planes, t_points, planes, points)
        ctx.save_for_forward(t_planes, t_points, planes, points)  # functorch's batched jvp wants them
        ctx.args = args

    @staticmethod
    def backward(ctx, c):
        t_planes, t_points, planes, points = ctx.saved_tensors
        need_tp, need_tx, need_planes, need_points = ctx.needs_input_grad[:4]
        c = c.contiguous()
        g_tp = g_tx = g_p = g_x = None
        if need_tp or need_tx:
            g_tp, g_tx = _backward_fn(c, planes, points).apply(c, planes, points, ctx.args, need_tp, need_tx)
        need_planes = need_planes and t_points is not None  # the planes enter J t only through J_points t_points
        need_points = need_points and (t_planes is not None or t_points is not None)
        if need_planes or need_points:
            _, g_p, g_x = _double_backward_fn(c, t_planes, t_points, planes, points).apply(
                t_planes, t_points, c, planes, points, ctx.args, False, need_planes, need_points)
        return (g_tp if need_tp else None, g_tx if need_tx else None, g_p if need_planes else None,
                g_x if need_points else None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):  # forward over forward (jacfwd(jacfwd(f))): not implemented
        raise NotImplementedError(_NOT_IMPLEMENTED)


class _SampleBackwardFn(torch.autograd.Function):
    """``npht::triplane_sample_backward`` for torch.func transforms; its backward is the
    double-backward op (a third derivative is not supported)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, planes, points, args, need_planes, need_points):
        return torch.ops.npht.triplane_sample_backward(grad_out, planes, points, *args.values, need_planes,
                                                       need_points)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, planes, points, args, need_planes, need_points = inputs
        ctx.save_for_backward(grad_out, planes, points)
        ctx.args = args
        ctx.made = (need_planes, need_points)

    @staticmethod
    def backward(ctx, gg_planes, gg_points):
        grad_out, planes, points = ctx.saved_tensors
        if _backend.forward_mode(gg_planes, gg_points, grad_out, planes, points):
            raise NotImplementedError(_NOT_IMPLEMENTED)
        gg_planes = _usable(gg_planes) if ctx.made[0] else None
        gg_points = _usable(gg_points) if ctx.made[1] else None
        need_go, need_planes, need_points = ctx.needs_input_grad[:3]
        need_planes = need_planes and gg_points is not None
        if gg_planes is None and gg_points is None or not (need_go or need_planes or need_points):
            return (None,) * 6
        g_go, g_p, g_x = _SampleDoubleBackwardFn.apply(gg_planes, gg_points, grad_out, planes, points, ctx.args,
                                                       need_go, need_planes, need_points)
        return g_go if need_go else None, g_p if need_planes else None, g_x if need_points else None, None, None, None


class _SampleBackwardForwardModeFn(_SampleBackwardFn):
    """:class:`_SampleBackwardFn` with forward mode: forward over reverse, e.g.
    ``torch.func.hessian`` (``jacfwd(jacrev(f))``), or a dual tensor's reverse-mode gradient."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _SampleBackwardFn.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])
        ctx.outs = tuple((t.shape, t.dtype) for t in output)

    @staticmethod
    def jvp(ctx, t_grad_out, t_planes, t_points, *_):
        # The backward is linear in grad_out and (its points part) in the planes, so those
        # tangents go through the backward kernel itself. The points' tangent: the double
        # backward with gg_points = t_points gives d/dplanes <t, grad_points> (the mixed second
        # derivative of <grad_out, f>, = d grad_planes / dpoints . t) and d/dpoints <t,
        # grad_points> (its Hessian w.r.t. each point, symmetric, . t). At most three launches.
        # (Through the Functions, not the raw ops: an enclosing transform then differentiates
        # the backward again or refuses, never drops a tangent.)
        grad_out, planes, points = ctx.saved_tensors
        need_planes, need_points = ctx.made
        t_gp, t_gx = (planes.new_zeros(shape, dtype=dtype) for shape, dtype in ctx.outs)
        if t_grad_out is not None:
            gp, gx = _backward_fn(t_grad_out, planes, points).apply(
                t_grad_out.contiguous(), planes, points, ctx.args, need_planes, need_points)
            t_gp, t_gx = t_gp + gp, t_gx + gx
        if t_planes is not None and need_points:
            _, gx = _backward_fn(grad_out, t_planes, points).apply(
                grad_out, t_planes.contiguous(), points, ctx.args, False, True)
            t_gx = t_gx + gx
        if t_points is not None:
            _, gp, gx = _double_backward_fn(t_points, grad_out, planes, points).apply(
                None, t_points.contiguous(), grad_out, planes, points, ctx.args, False, need_planes, need_points)
            t_gp, t_gx = t_gp + gp, t_gx + gx
        return t_gp, t_gx


class _SampleDoubleBackwardFn(torch.autograd.Function):
    """``npht::triplane_sample_double_backward`` for torch.func transforms: differentiating
    it again (a third derivative) raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gg_planes, gg_points, grad_out, planes, points, args, need_go, need_planes, need_points):
        return torch.ops.npht.triplane_sample_double_backward(gg_planes, gg_points, grad_out, planes, points, *args.values,
                                                             need_go, need_planes, need_points)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(_NOT_IMPLEMENTED)


class _SampleDoubleBackwardForwardModeFn(_SampleDoubleBackwardFn):
    """:class:`_SampleDoubleBackwardFn` where forward mode is at work: its jvp (a third
    derivative) raises npht's message rather than torch's generic one."""

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(_NOT_IMPLEMENTED)


def _backward_fn(*tensors):
    """The backward op's Function: with a jvp where forward mode is at work (forward over
    reverse), else without (torch.compile cannot trace a custom jvp)."""
    return _SampleBackwardForwardModeFn if _backend.forward_mode(*tensors) else _SampleBackwardFn


def _double_backward_fn(*tensors):
    return _SampleDoubleBackwardForwardModeFn if _backend.forward_mode(*tensors) else _SampleDoubleBackwardFn


# ---- public function -------------------------------------------------------------------


def _check_inputs(planes, points, channels_last: bool):
    if not isinstance(planes, torch.Tensor):
        raise TypeError(f"planes must be a torch.Tensor, got {type(planes).__name__}")
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    layout = "[B, 3, H, W, C]" if channels_last else "[B, 3, C, H, W]"
    if planes.dim() != 5:
        raise ValueError(f"planes must be 5-D {layout}, got shape {tuple(planes.shape)}")
    if planes.shape[1] != 3:
        raise ValueError(
            f"planes must hold 3 planes in dim 1 ({layout}), got shape {tuple(planes.shape)}"
        )
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [B, N, 3], got shape {tuple(points.shape)}")
    if points.shape[0] != planes.shape[0]:
        raise ValueError(
            f"points and planes must have the same batch size, got points {tuple(points.shape)} "
            f"and planes {tuple(planes.shape)}"
        )
    if planes.device != points.device:
        raise ValueError(
            f"planes and points must be on the same device, got {planes.device} and {points.device}"
        )
    if planes.dtype not in _PLANE_DTYPES:
        raise TypeError(
            f"planes must be float32, float64, float16 or bfloat16, got {planes.dtype}"
        )
    want = torch.float64 if planes.dtype == torch.float64 else torch.float32
    if points.dtype != want:
        raise TypeError(
            f"points must be {want} for {planes.dtype} planes, got {points.dtype}"
            + (" (use points.float())" if want == torch.float32 else " (use points.double())")
        )
    C, H, W = (planes.shape[4], planes.shape[2], planes.shape[3]) if channels_last else planes.shape[2:]
    if min(C, H, W) < 1:
        raise ValueError(f"planes must have C, H, W >= 1, got shape {tuple(planes.shape)}")


def triplane_sample(
    planes: torch.Tensor,
    points: torch.Tensor,
    *,
    aggregate: str = "sum",
    align_corners: bool = False,
    padding_mode: str = "zeros",
    projection: Projection = "npht",
    box_warp: float = 2.0,
    channels_last: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Sample three feature planes bilinearly at 3-D points and aggregate the features.

    Args:
        planes: ``[B, 3, C, H, W]`` (generator layout), or ``[B, 3, H, W, C]`` with
            ``channels_last=True`` (the kernels' layout: no copy). float32, float64, or
            float16/bfloat16 (computed in float32).
        points: ``[B, N, 3]``; float32 (float64 for float64 planes).
        aggregate: ``"sum"`` (thesis), ``"mean"`` (EG3D) -> ``[B, N, C]``;
            ``"concat"`` -> ``[B, N, 3C]``, plane-major.
        align_corners, padding_mode: as in ``F.grid_sample`` (``"zeros"`` or ``"border"``).
        projection: ``"npht"`` (planes xy, yz, xz), ``"eg3d"`` (EG3D's planes xy, xz, zx), or
            three ``(u, v)`` axis pairs; plane k reads ``p[u]`` along W and ``p[v]`` along H.
        box_warp: side of the cube the planes span (EG3D's name): coordinates are scaled by
            ``2 / box_warp``. The default 2.0 maps ``[-1, 1]^3`` onto the planes.
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    Points outside the planes follow ``padding_mode`` exactly like ``F.grid_sample``.
    ``+-inf`` coordinates are outside too: zeros padding gives 0 (``F.grid_sample`` gives
    NaN there), border padding the edge (as ``F.grid_sample``). A NaN coordinate gives NaN
    features from the planes that read it, and that (point, plane) pair contributes no
    gradient.

    Differentiable w.r.t. ``planes`` and ``points`` to second order (eikonal and normal
    losses): the point-gradient is itself differentiable w.r.t. planes, points and the
    upstream gradient. The same kernels serve torch.func: ``grad``, ``vjp``, ``jacrev``
    and ``vmap`` (the vmapped copies folded into one launch), nested to second order
    (``grad`` of a loss on ``vmap(grad(sdf))``; ``jacrev(jacrev(f))`` for a Hessian), and
    forward mode to first order (``jvp``, ``jacfwd``, ``torch.autograd.forward_ad`` dual
    tensors), and mixed to second order: forward over reverse (``torch.func.hessian``; the
    backward's jvp from the backward and double-backward kernels) and reverse over forward
    (``jacrev(jacfwd(f))``, ``grad`` of a ``jvp``); forward over forward and third
    derivatives raise NotImplementedError.
    """
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {type(channels_last).__name__}")
    _check_inputs(planes, points, channels_last)
    if not isinstance(aggregate, str) or aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {tuple(_AGGREGATES)}, got {aggregate!r}")
    if not isinstance(padding_mode, str) or padding_mode not in _PADDINGS:
        raise ValueError(f"padding_mode must be one of {tuple(_PADDINGS)}, got {padding_mode!r}")
    if (isinstance(box_warp, bool) or not isinstance(box_warp, numbers.Real)
            or not (0 < float(box_warp) < math.inf)):
        raise ValueError(f"box_warp must be a positive finite number, got {box_warp!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")
    axes = [a for pair in resolve_projection(projection) for a in pair]
    backend = _backend.resolve_backend(backend, planes.device)
    planes_cl = planes if channels_last else planes.permute(0, 1, 3, 4, 2)
    args = (axes, 2.0 / float(box_warp), _AGGREGATES[aggregate], _PADDINGS[padding_mode], bool(align_corners),
            backend)
    if _backend.under_transform(planes, points):  # torch.func or forward-mode AD: the autograd.Functions
        fn = _SampleForwardModeFn if _backend.forward_mode(planes, points) else _SampleFn
        return fn.apply(planes_cl.contiguous(), points.contiguous(), _backend.OpaqueArgs(args))
    return torch.ops.npht.triplane_sample(planes_cl.contiguous(), points.contiguous(), *args)
