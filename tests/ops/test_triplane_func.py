"""npht.triplane_sample under torch.func transforms (grad, vjp, jacrev, vmap, jvp, jacfwd)
and forward-mode AD, against the pure-PyTorch gather reference under the same transform.

torch.library's autograd wrapper is refused by functorch (pytorch/pytorch#168393): without
the op's own autograd.Functions every transform below would raise, and forward-mode AD
would silently drop the tangent."""


import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf

import npht
from _backends import close
from npht.ops import triplane as triplane_mod
from npht.reference import triplane_sample as _reference


def reference(planes, points, **kw):
    # gathers: differentiable in every mode (F.grid_sample has no forward-mode derivative)
    return _reference(planes, points, impl="gather", **kw)


def inputs(device, dtype=torch.float64, B=2, N=7, C=3, H=5, W=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, dtype=dtype, generator=gen).to(device)
    points = ((torch.rand(B, N, 3, dtype=dtype, generator=gen) * 2 - 1) * 1.1).to(device)
    return planes, points


# vmap must use the ops' own batching rules, not functorch's per-sample loop (which warns)
pytestmark = pytest.mark.filterwarnings("error:.*performance drop")


@pytest.mark.parametrize("aggregate", ["sum", "mean", "concat"])
def test_grad_and_vjp(backend, device, aggregate):
    planes, points = inputs(device)
    kw = dict(aggregate=aggregate, padding_mode="border" if aggregate == "mean" else "zeros")

    def loss(impl):
        return lambda P, X: impl(P, X, **kw).sin().sum()

    ours = tf.grad(loss(lambda P, X, **k: npht.triplane_sample(P, X, backend=backend, **k)), argnums=(0, 1))
    close(ours(planes, points), tf.grad(loss(reference), argnums=(0, 1))(planes, points))
    # one argument only: the other's gradient is not asked for
    close(tf.grad(loss(lambda P, X, **k: npht.triplane_sample(P, X, backend=backend, **k)), argnums=1)(planes, points),
          tf.grad(loss(reference), argnums=1)(planes, points))

    cot = torch.randn(2, 7, 9 if aggregate == "concat" else 3, dtype=torch.float64).to(device)
    out, vjp = tf.vjp(lambda P, X: npht.triplane_sample(P, X, backend=backend, **kw), planes, points)
    out_ref, vjp_ref = tf.vjp(lambda P, X: reference(P, X, **kw), planes, points)
    close(out, out_ref)
    close(vjp(cot), vjp_ref(cot))


def test_jacrev(backend, device):
    """jacrev vmaps the backward over the output's basis: w.r.t. the points the planes'
    gradient is not needed (the V copies folded into the points), w.r.t. the planes it is
    (folded into the batch)."""
    planes, points = inputs(device, N=4, C=2, H=3, W=3)
    op = lambda P, X: npht.triplane_sample(P, X, aggregate="concat", align_corners=True, backend=backend)  # noqa: E731
    ref = lambda P, X: reference(P, X, aggregate="concat", align_corners=True)  # noqa: E731
    close(tf.jacrev(op, argnums=1)(planes, points), tf.jacrev(ref, argnums=1)(planes, points))
    close(tf.jacrev(op, argnums=(0, 1))(planes, points), tf.jacrev(ref, argnums=(0, 1))(planes, points))


def test_vmap(backend, device):
    planes, points = inputs(device)
    op = lambda P, X: npht.triplane_sample(P, X, projection="eg3d", backend=backend)  # noqa: E731
    ref = lambda P, X: reference(P, X, projection="eg3d")  # noqa: E731
    many_points = torch.stack([points, points.flip(1), points * 0.5])
    many_planes = torch.stack([planes, -planes, planes * 2])
    # points only (one launch with 3N points), both, in_dims other than 0, out_dims
    close(tf.vmap(op, in_dims=(None, 0))(planes, many_points), tf.vmap(ref, in_dims=(None, 0))(planes, many_points))
    close(tf.vmap(op)(many_planes, many_points), tf.vmap(ref)(many_planes, many_points))
    close(tf.vmap(op, in_dims=(2, None), out_dims=1)(many_planes.movedim(0, 2), points),
          tf.vmap(ref, in_dims=(2, None), out_dims=1)(many_planes.movedim(0, 2), points))
    # nested vmap, chunked vmap
    nested = many_points[:, None].expand(3, 2, *points.shape)
    close(tf.vmap(tf.vmap(op, in_dims=(None, 0)), in_dims=(None, 0))(planes, nested),
          tf.vmap(tf.vmap(ref, in_dims=(None, 0)), in_dims=(None, 0))(planes, nested))
    close(tf.vmap(op, in_dims=(None, 0), chunk_size=2)(planes, many_points), tf.vmap(ref, in_dims=(None, 0))(planes, many_points))


def test_per_point_normals_and_eikonal(backend, device):
    """The torch.func way to an SDF's normals and an eikonal loss: vmap(grad(sdf)) over the
    points, then grad of the loss w.r.t. the planes and the head (second order)."""
    planes, points = inputs(device, B=1, N=6)
    head = torch.randn(3, dtype=torch.float64).to(device)

    def sdf_at(impl, P, w, x):  # one point x [3] -> a scalar
        return (impl(P, x.reshape(1, 1, 3)) @ w).sum()

    def eikonal(impl):
        def loss(P, w):
            normals = tf.vmap(tf.grad(lambda x: sdf_at(impl, P, w, x)))(points[0])
            return ((normals.norm(dim=-1) - 1) ** 2).mean()
        return tf.grad(loss, argnums=(0, 1))(planes, head)

    op = lambda P, X: npht.triplane_sample(P, X, backend=backend)  # noqa: E731
    normals = tf.vmap(tf.grad(lambda x: sdf_at(op, planes, head, x)))(points[0])
    close(normals, tf.vmap(tf.grad(lambda x: sdf_at(reference, planes, head, x)))(points[0]))
    close(eikonal(op), eikonal(reference), rtol=1e-9, atol=1e-9)


def test_second_order_batched(backend, device):
    """grad of a loss on grad w.r.t. the points of the whole batch (as the training loss
    writes it), and a Hessian w.r.t. the points by jacrev(jacrev)."""
    planes, points = inputs(device, N=5)
    head = torch.randn(3, dtype=torch.float64).to(device)

    def eikonal(impl):
        def loss(P, X):
            n = tf.grad(lambda X: (impl(P, X) @ head).sum())(X)
            return ((n.norm(dim=-1) - 1) ** 2).mean()
        return tf.grad(loss, argnums=(0, 1))(planes, points)

    op = lambda P, X: npht.triplane_sample(P, X, padding_mode="border", backend=backend)  # noqa: E731
    ref = lambda P, X: reference(P, X, padding_mode="border")  # noqa: E731
    close(eikonal(op), eikonal(ref), rtol=1e-9, atol=1e-9)
    hess = tf.jacrev(tf.jacrev(lambda X: (op(planes[:1], X) @ head).sum()))(points[:1])
    close(hess, tf.jacrev(tf.jacrev(lambda X: (ref(planes[:1], X) @ head).sum()))(points[:1]), rtol=1e-9, atol=1e-9)


def test_forward_mode(backend, device):
    """jvp (one launch of the double-backward kernel), jacfwd, and plain forward-mode AD
    with dual tensors, against the reference's reverse-mode Jacobian."""
    planes, points = inputs(device, N=4)
    t_planes, t_points = torch.randn_like(planes), torch.randn_like(points)
    kw = dict(aggregate="mean", align_corners=True)
    op = lambda P, X: npht.triplane_sample(P, X, backend=backend, **kw)  # noqa: E731
    ref = lambda P, X: reference(P, X, **kw)  # noqa: E731
    expected = tf.jvp(ref, (planes, points), (t_planes, t_points))
    close(tf.jvp(op, (planes, points), (t_planes, t_points)), expected)
    close(tf.jvp(lambda X: op(planes, X), (points,), (t_points,))[1],
          tf.jvp(lambda X: ref(planes, X), (points,), (t_points,))[1])
    close(tf.jacfwd(op, argnums=1)(planes, points), tf.jacrev(ref, argnums=1)(planes, points))
    with fwAD.dual_level():
        out = op(fwAD.make_dual(planes, t_planes), fwAD.make_dual(points, t_points))
        primal, tangent = fwAD.unpack_dual(out)
    close(primal, expected[0])
    assert tangent is not None  # torch.library ops alone drop it without a word
    close(tangent, expected[1])


def test_mixed_modes_second_order(backend, device):
    """Forward over reverse (torch.func.hessian = jacfwd(jacrev): the backward's jvp, from
    the backward and double-backward kernels) and reverse over forward (jacrev(jacfwd), grad
    of a jvp: the JVP's own backward, from the same kernels) w.r.t. the planes, the points
    and both, and a dual tensor's reverse-mode gradient (its tangent: the Hessian times the
    tangent), against the reference's reverse-over-reverse Hessian."""
    planes, points = inputs(device, B=2, N=3, C=2, H=4, W=3)
    for kw in (dict(), dict(aggregate="concat", align_corners=True, padding_mode="border")):
        C = 6 if kw else 2
        head = torch.randn(C, dtype=torch.float64, generator=torch.Generator().manual_seed(C)).to(device)

        def f(P, X, impl=lambda P, X: npht.triplane_sample(P, X, backend=backend, **kw)):
            return (impl(P, X) @ head).square().sum()   # nonlinear in the planes too

        def r(P, X):
            return f(P, X, impl=lambda P, X: reference(P, X, **kw))

        for argnums in (0, 1, (0, 1)):
            expected = tf.jacrev(tf.jacrev(r, argnums=argnums), argnums=argnums)(planes, points)
            close(tf.hessian(f, argnums=argnums)(planes, points), expected)
            close(tf.jacrev(tf.jacfwd(f, argnums=argnums), argnums=argnums)(planes, points), expected)
        # grad of a JVP w.r.t. the planes and the points
        t = torch.randn_like(points)

        def jvp_loss(impl):
            return lambda P, X: tf.jvp(lambda Y: impl(P, Y), (X,), (t,))[1].square().sum()

        close(tf.grad(jvp_loss(lambda P, X: npht.triplane_sample(P, X, backend=backend, **kw)), argnums=(0, 1))(
            planes, points), tf.grad(jvp_loss(lambda P, X: reference(P, X, **kw)), argnums=(0, 1))(planes, points))
    t = torch.randn_like(points)
    grads = []
    for fn in (f, r):
        with fwAD.dual_level():
            x = fwAD.make_dual(points.clone().requires_grad_(True), t)
            (g,) = torch.autograd.grad(fn(planes, x), x)
            grads.append(fwAD.unpack_dual(g))
    close(grads[0].primal, grads[1].primal)
    assert grads[0].tangent is not None
    close(grads[0].tangent, grads[1].tangent)


def test_not_implemented_derivatives_raise(backend, device):
    planes, points = inputs(device, B=1, N=3)
    head = torch.randn(3, dtype=torch.float64).to(device)

    def sdf(P, X):
        return (npht.triplane_sample(P, X, backend=backend) @ head).sum()

    forward_over_forward = lambda: tf.jacfwd(tf.jacfwd(sdf, argnums=1), argnums=1)(planes, points)  # noqa: E731
    third = lambda: tf.grad(lambda X: tf.grad(lambda X: tf.grad(sdf, argnums=1)(planes, X).square().sum())(X).sum())(points)  # noqa: E731,E501
    hessian_of_gradient = lambda: tf.jacfwd(tf.hessian(sdf, argnums=1), argnums=1)(planes, points)  # noqa: E731
    grad_of_reverse_over_forward = lambda: tf.grad(  # noqa: E731
        lambda X: tf.jacrev(tf.jacfwd(sdf, argnums=1), argnums=1)(planes, X).sum())(points)
    for case in (forward_over_forward, third, hessian_of_gradient, grad_of_reverse_over_forward):
        with pytest.raises(NotImplementedError, match="differentiable twice in reverse mode"):
            case()


def test_float32_channels_last(backend, device):
    """The production dtype and layout (float32 kernels' rounding: looser tolerance)."""
    planes, points = inputs(device, dtype=torch.float32, C=4)
    planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()

    def loss(impl, cl):
        return lambda P, X: impl(P, X, channels_last=cl).square().sum()

    ours = tf.grad(loss(lambda P, X, **k: npht.triplane_sample(P, X, backend=backend, **k), True), argnums=(0, 1))
    close(ours(planes_cl, points), tf.grad(loss(reference, True), argnums=(0, 1))(planes_cl, points),
          rtol=1e-4, atol=1e-5)


def test_plain_autograd_path_unchanged(monkeypatch):
    """Without a transform or dual tensors the op is the registered one (what opcheck and
    torch.compile see): the autograd.Functions are not used."""
    def refuse(*args):
        raise AssertionError("the torch.func path ran outside a transform")

    monkeypatch.setattr(triplane_mod._SampleFn, "apply", refuse)
    monkeypatch.setattr(triplane_mod._SampleForwardModeFn, "apply", refuse)
    planes, points = inputs("cpu")
    planes.requires_grad_(True)
    points.requires_grad_(True)
    out = npht.triplane_sample(planes, points, backend="cpu")
    (g,) = torch.autograd.grad(out.sum(), points, create_graph=True)
    g.square().sum().backward()
    assert planes.grad is not None


def test_torch_compile_of_a_transform():
    """torch.compile around torch.func.grad traces the autograd.Functions (fullgraph)."""
    planes, points = inputs("cpu", dtype=torch.float32)
    g = tf.grad(lambda X: npht.triplane_sample(planes, X, backend="cpu").square().sum())
    close(torch.compile(g, fullgraph=True)(points), g(points), rtol=1e-6, atol=1e-6)


def test_gradcheck_forward_ad_and_batched_grads(backend, device):
    """torch.autograd.gradcheck's forward-mode check (the jvp rule), gradgradcheck's
    forward-over-reverse check (the backward's jvp rule) and batched-gradient checks
    (autograd.grad(is_grads_batched=True), torch's legacy vmap prototype: one launch per
    copy), to second order."""
    planes, points = inputs(device, B=1, N=4, C=2, H=3, W=4)
    planes.requires_grad_(True)
    points.requires_grad_(True)

    def fn(P, X):
        return npht.triplane_sample(P, X, aggregate="concat", backend=backend)

    fast = backend == "triton" and not torch.cuda.is_available()
    assert torch.autograd.gradcheck(fn, (planes, points), eps=1e-6, atol=1e-7, check_forward_ad=True,
                                    check_batched_grad=True, fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (planes, points), eps=1e-6, atol=1e-6, check_batched_grad=True,
                                        check_fwd_over_rev=True, fast_mode=fast)
