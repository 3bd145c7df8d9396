"""Reference compositing and the Laplace density."""

import pytest
import torch

from npht.reference.render import composite, composite_packed
from npht.render import LaplaceDensity, laplace_density


def test_laplace_density_values():
    beta = 0.1
    s = torch.tensor([-1.0, -0.1, 0.0, 0.1, 1.0], dtype=torch.float64)
    expected = torch.where(s > 0, 0.5 * torch.exp(-s / beta), 1 - 0.5 * torch.exp(s / beta)) / beta
    torch.testing.assert_close(laplace_density(s, beta), expected)
    dens = LaplaceDensity(beta=0.001, beta_min=1e-4)
    assert abs(dens.get_beta().item() - 0.0011) < 1e-9
    with pytest.raises(ValueError, match="beta must be > 0"):
        LaplaceDensity(beta=0.0)


def _rays(R=6, S=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.sort(torch.rand(R, S, generator=g, dtype=torch.float64) * 2 + 0.5, dim=1).values
    sdf = torch.randn(R, S, generator=g, dtype=torch.float64) * 0.2
    v = torch.randn(R, S, 3, generator=g, dtype=torch.float64)
    return z, sdf, v


def test_weights_sum_to_one_minus_transmittance():
    z, sdf, v = _rays()
    beta = torch.tensor(0.05, dtype=torch.float64)
    rendered, depth, opacity, w = composite(sdf, z, beta, v, last_delta=0.3)
    dens = laplace_density(sdf, beta)
    delta = torch.cat([z[:, 1:] - z[:, :-1], torch.full_like(z[:, :1], 0.3)], -1)
    torch.testing.assert_close(opacity, 1 - torch.exp(-(dens * delta).sum(1)))
    torch.testing.assert_close(rendered, (w[..., None] * v).sum(1))
    assert (w >= 0).all() and (opacity <= 1).all()


def test_opaque_wall_depth():
    """A plane at depth 1.3 along every ray, small beta: depth -> 1.3, opacity -> 1."""
    z = torch.linspace(0.5, 2.0, 301, dtype=torch.float64).expand(4, -1)
    sdf = 1.3 - z
    _, depth, opacity, _ = composite(sdf, z, 1e-3, None)
    torch.testing.assert_close(opacity, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(depth, torch.full((4,), 1.3, dtype=torch.float64), atol=2e-3, rtol=0)


def test_composite_gradcheck():
    z, sdf, v = _rays(R=3, S=5)
    beta = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    sdf.requires_grad_()
    v.requires_grad_()

    def f(sdf, beta, v):
        r, d, o, _ = composite(sdf, z, beta, v)
        return r, d, o

    assert torch.autograd.gradcheck(f, (sdf, beta, v))
    assert torch.autograd.gradgradcheck(f, (sdf, beta, v))


def test_packed_matches_dense():
    z, sdf, v = _rays(R=5, S=7)
    dense = composite(sdf, z, 0.05, v)
    off = torch.arange(0, 36, 7)
    packed = composite_packed(sdf.reshape(-1), z.reshape(-1), 0.05, off, v.reshape(-1, 3))
    for a, b in zip(dense[:3], packed[:3]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(dense[3].reshape(-1), packed[3])


def test_packed_variable_counts():
    counts = [3, 0, 7, 1]
    off = torch.tensor([0, 3, 3, 10, 11])
    z, sdf, v = _rays(R=4, S=7, seed=3)
    flat = [(z[r, :c], sdf[r, :c], v[r, :c]) for r, c in enumerate(counts)]
    zp, sp, vp = (torch.cat([f[i] for f in flat]) for i in range(3))
    rendered, depth, opacity, w = composite_packed(sp, zp, 0.05, off, vp)
    for r, c in enumerate(counts):
        if c == 0:
            assert opacity[r] == 0 and depth[r] == 0
            continue
        ref = composite(sdf[r:r + 1, :c], z[r:r + 1, :c], 0.05, v[r:r + 1, :c])
        torch.testing.assert_close(rendered[r], ref[0][0])
        torch.testing.assert_close(depth[r], ref[1][0])
