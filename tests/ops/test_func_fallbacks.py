"""npht.volume_composite and npht.softplus_mlp_with_grad under torch.func transforms and
forward-mode AD (the registered ops' autograd is refused by functorch,
pytorch/pytorch#168393, and drops forward-mode tangents without a word): reverse mode runs
the fused ops through their autograd.Functions and vmap rules (tests/ops/test_composite_func.py
and tests/ops/test_mlp_func.py check that path in depth), forward mode the same formulas in
PyTorch ops. Checked against the registered ops' plain autograd."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf

import npht
from _backends import close
from npht.reference.mlp import softplus_mlp_with_grad_explicit
from test_mlp_func import mlp_inputs

DT = torch.float64


def autograd_grads(fn, args):
    """Gradients of fn(*args) (a scalar) by plain autograd through the registered ops."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    return torch.autograd.grad(fn(*leaves), leaves)


# ---- compositing ----------------------------------------------------------------------


def dense_inputs(R=5, S=7, K=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sdf = torch.randn(R, S, dtype=DT, generator=gen) * 0.2
    z = torch.sort(torch.rand(R, S, dtype=DT, generator=gen) * 2 + 0.5, -1)[0]
    beta = torch.full((R,), 0.05, dtype=DT) + torch.rand(R, dtype=DT, generator=gen) * 0.05
    values = torch.randn(R, S, K, dtype=DT, generator=gen)
    return sdf, z, beta, values


def composite_loss(backend, offsets=None):
    def loss(sdf, z, beta, values):
        out = npht.volume_composite(sdf, z, beta, values, ray_offsets=offsets, backend=backend)
        return out.rendered.square().sum() + out.depth.sum() + out.opacity.square().sum() + out.weights.sin().sum()
    return loss


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_composite_grad_dense_and_packed(backend):
    args = dense_inputs()
    fn = composite_loss(backend)
    close(tf.grad(fn, argnums=(0, 1, 2, 3))(*args), autograd_grads(fn, args))
    # packed: rays of 3, 0, 4 and 5 samples, one shared beta
    gen = torch.Generator().manual_seed(1)
    offsets = torch.tensor([0, 3, 3, 7, 12])
    packed = (torch.randn(12, dtype=DT, generator=gen) * 0.2,
              torch.cat([torch.sort(torch.rand(n, dtype=DT, generator=gen) + 0.5)[0] for n in (3, 0, 4, 5)]),
              torch.tensor([0.07], dtype=DT), torch.randn(12, 2, dtype=DT, generator=gen))
    fn = composite_loss(backend, offsets)
    close(tf.grad(fn, argnums=(0, 1, 2, 3))(*packed), autograd_grads(fn, packed))


def test_composite_vmap_jacrev_and_forward_mode():
    sdf, z, beta, values = dense_inputs(R=3, S=5, K=2)

    def depth(s):
        return npht.volume_composite(s, z, beta, values, backend="cpu").depth

    many = torch.stack([sdf, sdf * 0.5, -sdf])
    close(tf.vmap(depth)(many), torch.stack([depth(s) for s in many]))
    jac = tf.jacrev(depth)(sdf)
    rows = [autograd_grads(lambda s: depth(s)[r], (sdf,))[0] for r in range(3)]
    close(jac, torch.stack(rows))
    tangent = torch.randn_like(sdf)
    expected = torch.einsum("rij,ij->r", jac, tangent)
    close(tf.jvp(depth, (sdf,), (tangent,))[1], expected)
    with fwAD.dual_level():
        out = depth(fwAD.make_dual(sdf, tangent))
        t = fwAD.unpack_dual(out).tangent
    assert t is not None
    close(t, expected)


# ---- the SDF decoder's value and gradient ----------------------------------------------


@pytest.mark.parametrize("beta", [10.0, 100.0])  # 100: some pre-activations on softplus' linear branch
def test_mlp_eikonal_under_grad(beta):
    x, weights, biases = mlp_inputs("cpu")

    def loss(x, w0, w1, b0):
        y, g = npht.softplus_mlp_with_grad(x, [w0, w1, weights[2]], [b0, biases[1], biases[2]], beta=beta,
                                           backend="cpu")
        return ((g.norm(dim=-1) - 1) ** 2).sum() + y.abs().sum()

    args = (x, weights[0], weights[1], biases[0])
    h0 = torch.nn.functional.linear(x, weights[0], biases[0]) * beta
    if beta == 100.0:
        assert bool((h0 > 20).any()) and bool((h0 <= 20).any())
    close(tf.grad(loss, argnums=(0, 1, 2, 3))(*args), autograd_grads(loss, args))


def test_mlp_vmap_and_forward_mode():
    x, weights, biases = mlp_inputs("cpu", M=4)

    def value(p):  # one point -> the scalar field
        return npht.softplus_mlp_with_grad(p, weights, biases, beta=10.0)[0]

    # the gradient output equals vmap(grad) of the value, and jacfwd of it
    _, g = npht.softplus_mlp_with_grad(x, weights, biases, beta=10.0)
    close(tf.vmap(tf.grad(value))(x), g)
    close(tf.vmap(tf.jacfwd(value))(x), g)
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        y, gd = npht.softplus_mlp_with_grad(fwAD.make_dual(x, tangent), weights, biases, beta=10.0)
        ty, tg = fwAD.unpack_dual(y).tangent, fwAD.unpack_dual(gd).tangent
    assert ty is not None and tg is not None
    close(ty, (g * tangent).sum(-1))
    hess = torch.stack([tf.hessian(value)(p) for p in x])
    close(tg, torch.einsum("mij,mj->mi", hess, tangent))


def test_explicit_gradient_matches_autograd():
    """The explicit reverse pass equals the autograd reference, value and gradient, and
    under a second derivative."""
    x, weights, biases = mlp_inputs("cpu")
    y, g = softplus_mlp_with_grad_explicit(x, weights, biases, 100.0, 20.0)
    y_ref, g_ref = npht.reference.softplus_mlp_with_grad(x, weights, biases, 100.0, 20.0)
    close(y, y_ref)
    close(g, g_ref)

    def loss(impl):
        return lambda w0: impl(x, [w0, *weights[1:]], biases, 100.0, 20.0)[1].square().sum()

    close(autograd_grads(loss(softplus_mlp_with_grad_explicit), (weights[0],)),
          autograd_grads(loss(npht.reference.softplus_mlp_with_grad), (weights[0],)))


def test_gradcheck_forward_ad():
    """gradcheck's forward-mode check through the PyTorch formulas."""
    sdf, z, beta, values = (t.requires_grad_(True) for t in dense_inputs(R=2, S=4, K=2))

    def comp(s, zz, b, v):
        out = npht.volume_composite(s, zz, b, v, backend="cpu")
        return out.rendered, out.depth, out.opacity

    assert torch.autograd.gradcheck(comp, (sdf, z, beta, values), check_forward_ad=True)
    x, weights, biases = mlp_inputs("cpu", M=3, D=3, width=4)
    args = (x.requires_grad_(True), weights[0].requires_grad_(True))
    assert torch.autograd.gradcheck(
        lambda x, w0: npht.softplus_mlp_with_grad(x, [w0, *weights[1:]], biases, beta=10.0),
        args, check_forward_ad=True)
