import doctest

import pytest
import torch

import npht.fit.fitting
import npht.fit.latent
import npht.fit.root_finding
from npht.fit import (ExpressionTransfer, fit_gaussian, interpolate_codes, invert_deformation, posed_vertices,
                      sample_codes, transfer_expression)


@pytest.mark.parametrize("mode", ["linear", "slerp"])
def test_interpolation_endpoints(mode):
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, generator=g), torch.randn(8, generator=g)
    z = interpolate_codes(z0, z1, 5, mode=mode)
    assert z.shape == (5, 8)
    torch.testing.assert_close(z[0], z0)
    torch.testing.assert_close(z[-1], z1)
    if mode == "linear":
        torch.testing.assert_close(z[2], 0.5 * (z0 + z1))
    else:  # norms interpolate linearly, directions stay on the great circle
        torch.testing.assert_close(z.norm(dim=1), torch.linspace(float(z0.norm()), float(z1.norm()), 5))
        cross = z / z.norm(dim=1, keepdim=True)
        angles = torch.arccos((cross[:-1] * cross[1:]).sum(1).clamp(-1, 1))
        torch.testing.assert_close(angles, angles[:1].expand(4), atol=1e-5, rtol=0)


def test_interpolation_errors_and_parallel_slerp():
    z = torch.ones(3)
    torch.testing.assert_close(interpolate_codes(z, 2 * z, 3, "slerp"), interpolate_codes(z, 2 * z, 3))
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        interpolate_codes(z, z, 1)
    with pytest.raises(ValueError, match="same shape"):
        interpolate_codes(z, torch.ones(4), 3)
    with pytest.raises(ValueError, match="mode must be"):
        interpolate_codes(z, z, 3, mode="cubic")


def test_gaussian_fit_recovers_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    D = 4
    A = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = A @ A.T + 0.1 * torch.eye(D, dtype=torch.float64)
    mean = torch.randn(D, generator=g, dtype=torch.float64)
    samples = sample_codes(mean, cov, 200_000, torch.Generator().manual_seed(1))
    m, c = fit_gaussian(samples)
    assert (m - mean).abs().max() < 0.03
    assert (c - cov).abs().max() < 0.05 * cov.abs().max()
    m2, var = fit_gaussian(samples, diagonal=True)
    torch.testing.assert_close(var, torch.diagonal(c))
    s = sample_codes(m2, var, 100_000, torch.Generator().manual_seed(2))
    assert (s.var(0) - var).abs().max() < 0.05 * var.max()
    # a diagonal fit has no correlation
    assert abs(float(torch.corrcoef(s.T)[0, 1])) < 0.02


def test_sampling_deterministic_and_rank_deficient():
    codes = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))  # K < D: singular covariance
    mean, cov = fit_gaussian(codes)
    a = sample_codes(mean, cov, 7, torch.Generator().manual_seed(3))
    b = sample_codes(mean, cov, 7, torch.Generator().manual_seed(3))
    c = sample_codes(mean, cov, 7, torch.Generator().manual_seed(4))
    assert a.shape == (7, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    with pytest.raises(ValueError, match="cov must have shape"):
        sample_codes(mean, torch.eye(3), 2)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        sample_codes(torch.zeros(2), -torch.eye(2), 2)
    with pytest.raises(ValueError, match="at least 2 codes"):
        fit_gaussian(torch.zeros(1, 3))


def test_posed_vertices_and_transfer(tiny_id, tiny_expr):
    model, expr = tiny_id(), tiny_expr()
    z_id_a, z_id_b = torch.tensor([0.8, -0.5, 0.3]), torch.tensor([-0.2, 0.4, 0.1])
    z_ex_a = torch.tensor([0.7, -0.6])
    verts = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        pv = posed_vertices(expr, verts, z_id_b, z_ex_a)
        assert pv.shape == (50, 3)
        torch.testing.assert_close(pv, verts + expr(verts[None], z_id_b[None], z_ex_a[None])[0])
        t = transfer_expression(expr, z_ex_a, z_id_b)
        assert isinstance(t, ExpressionTransfer)
        torch.testing.assert_close(t.vertices(verts), pv)
        torch.testing.assert_close(t(verts[None])[0], pv)
        # the inverse maps the posed vertices back; the posed SDF there is the neutral SDF
        x_c, ok = t.canonical(pv[None])
        assert ok.all() and (x_c[0] - verts).norm(dim=-1).max() < 1e-4
        sdf_posed = t.posed_sdf_fn(model)(pv[None])
        torch.testing.assert_close(sdf_posed, model(verts[None], z_id_b[None]), atol=1e-4, rtol=0)
        # another identity, same expression code: a different deformation
        assert (posed_vertices(expr, verts, z_id_a, z_ex_a) - pv).abs().max() > 0


def test_posed_sdf_gradient_reaches_codes(tiny_id, tiny_expr):
    model, expr = tiny_id(), tiny_expr()
    z_ex = torch.tensor([[0.7, -0.6]], requires_grad=True)
    t = transfer_expression(expr, z_ex, torch.tensor([0.8, -0.5, 0.3]))
    sdf = t.posed_sdf_fn(model)(torch.rand(1, 20, 3) - 0.5)
    (g,) = torch.autograd.grad(sdf.sum(), z_ex)
    assert g.abs().sum() > 0


def test_transfer_errors(tiny_expr):
    expr = tiny_expr()
    with pytest.raises(ValueError, match=r"z_ex must have shape \[2\] or \[B, 2\]"):
        transfer_expression(expr, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"vertices must have shape"):
        posed_vertices(expr, torch.zeros(4, 2), torch.zeros(3), torch.zeros(2))


@pytest.mark.parametrize("module", [npht.fit.root_finding, npht.fit.latent, npht.fit.fitting])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
