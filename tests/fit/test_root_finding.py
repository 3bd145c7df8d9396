import pytest
import torch

from npht.fit import deformation_jacobian, invert_deformation


def _analytic(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(3, 3, generator=g) * 0.8).to(dtype)
    b = torch.randn(3, generator=g).to(dtype)
    return A, b


def _deform(A, b, z):
    # |d/dx 0.1 sin(Ax + b + z)| <= 0.1 |A| < 1: invertible everywhere
    return lambda x: x + 0.1 * torch.sin(x @ A.T + b + z)


@pytest.mark.parametrize("method", ["broyden", "newton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverts_analytic_deformation(method, dtype):
    A, b = _analytic(dtype)
    z = torch.tensor([0.3, -0.2, 0.1], dtype=dtype)
    D = _deform(A, b, z)
    x_true = torch.rand(2, 300, 3, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x_p = D(x_true)
    tol = 1e-6 if dtype == torch.float32 else 1e-10
    x_c, ok = invert_deformation(D, x_p, iters=30, tol=tol, method=method)
    assert ok.shape == (2, 300) and ok.all()
    assert (D(x_c) - x_p).norm(dim=-1).max() < 1e-5
    assert (x_c - x_true).norm(dim=-1).max() < 1e-4  # the unique preimage
    assert not x_c.requires_grad


def test_initial_guess_and_convergence_mask():
    A, b = _analytic()
    D = _deform(A, b, torch.zeros(3, dtype=torch.float64))
    x_p = torch.rand(1, 50, 3, dtype=torch.float64) * 2 - 1
    # exact init: converged at once, unchanged
    x_true, _ = invert_deformation(D, x_p, tol=1e-12, iters=50)
    x_c, ok = invert_deformation(D, x_p, init=x_true, iters=0, tol=1e-10)
    assert ok.all() and torch.equal(x_c, x_true)
    # no iterations from x_p: flagged as not converged
    _, ok0 = invert_deformation(D, x_p, iters=0, tol=1e-10)
    assert not ok0.any()


def test_singular_jacobian_and_unconverged_points_flagged():
    # D(x) = x^3 (per coordinate) has no Jacobian inverse at 0 and the target needs many steps
    D = lambda x: x ** 3
    x_p = torch.tensor([[[0.0, 0.0, 0.0], [8.0, 1.0, -1.0]]], dtype=torch.float64)
    x_c, ok = invert_deformation(D, x_p, iters=60, tol=1e-9, method="newton")
    assert ok[0, 0] and ok[0, 1]
    torch.testing.assert_close(x_c[0, 1], torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64))
    _, ok2 = invert_deformation(D, x_p + 1.0, iters=2, tol=1e-12, method="newton")
    assert not ok2[0, 1]


def test_implicit_gradient_gradcheck():
    A, b = _analytic()

    def f(z, x_p):
        x_c, ok = invert_deformation(_deform(A, b, z), x_p, iters=50, tol=1e-13)
        assert ok.all()
        return x_c

    z = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    x_p = (torch.rand(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(f, (z, x_p), eps=1e-6, atol=1e-7)


def test_implicit_gradient_matches_finite_differences_through_a_loss():
    A, b = _analytic()
    x_p = torch.rand(1, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def loss(z):
        x_c, _ = invert_deformation(_deform(A, b, z), x_p, iters=50, tol=1e-13)
        return (x_c ** 2).sum() + x_c[..., 0].sin().sum()

    z = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(loss(z), z)
    eps = 1e-6
    fd = torch.stack([(loss(z.detach() + eps * e) - loss(z.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(3, dtype=torch.float64)])
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_gradient_does_not_backprop_through_iterations():
    A, b = _analytic()
    calls = {"grad": 0}
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def D(x):
        if torch.is_grad_enabled() and z.requires_grad:
            calls["grad"] += 1
        return _deform(A, b, z)(x)

    x_c, _ = invert_deformation(D, torch.rand(1, 10, 3, dtype=torch.float64), iters=30, tol=1e-12)
    # the Jacobian at the start and at the solution, and the one differentiable evaluation
    assert calls["grad"] == 3
    assert x_c.requires_grad and x_c.grad_fn is not None


def test_jacobian():
    A, b = _analytic()
    x = torch.rand(1, 5, 3, dtype=torch.float64)
    _, J = deformation_jacobian(_deform(A, b, torch.zeros(3, dtype=torch.float64)), x)
    expected = torch.eye(3, dtype=torch.float64) + 0.1 * torch.cos(x @ A.T + b)[..., :, None] * A
    torch.testing.assert_close(J, expected)


def test_bad_inputs():
    D = lambda x: x
    with pytest.raises(ValueError, match=r"x_posed must have shape \[B, N, 3\]"):
        invert_deformation(D, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="method must be"):
        invert_deformation(D, torch.zeros(1, 4, 3), method="bisection")
    with pytest.raises(ValueError, match="init must have the shape"):
        invert_deformation(D, torch.zeros(1, 4, 3), init=torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="deform_fn must map"):
        invert_deformation(lambda x: x[..., :2], torch.zeros(1, 4, 3))


def test_implicit_gradient_through_expression_network(tiny_expr):
    expr = tiny_expr(scale=0.2).double()
    x_p = torch.rand(1, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) - 0.5

    def f(z_id, z_ex):
        x_c, ok = invert_deformation(lambda x: expr.deform(x, z_id, z_ex), x_p, iters=50, tol=1e-13)
        assert ok.all()
        return x_c

    z_id = torch.tensor([[0.8, -0.5, 0.3]], dtype=torch.float64, requires_grad=True)
    z_ex = torch.tensor([[0.7, -0.6]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (z_id, z_ex), eps=1e-6, atol=1e-7)
