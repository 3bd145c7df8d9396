"""Latent-space utilities (thesis Sec. 6.1.2, 6.1.3, 6.2.2, 6.4.1): interpolation between
codes, unconditional sampling from a Gaussian fitted to the training codes, and
expression transfer between identities.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .root_finding import invert_deformation

__all__ = ["interpolate_codes", "fit_gaussian", "sample_codes", "transfer_expression", "posed_vertices",
           "ExpressionTransfer"]


def _vec(z: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() != 1 or z.numel() == 0:
        raise ValueError(f"{name} must be a non-empty floating-point vector [D], got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    return z


def interpolate_codes(z0: torch.Tensor, z1: torch.Tensor, steps: int, mode: str = "linear") -> torch.Tensor:
    """Codes ``[steps, D]`` from ``z0`` (first) to ``z1`` (last) at evenly spaced alpha in
    [0, 1]. ``"linear"``: ``(1 - alpha) z0 + alpha z1`` (eq. 6.1, which writes alpha for the
    other end); ``"slerp"``: spherical interpolation (angle and norm interpolated, which
    keeps intermediate codes at a typical norm for Gaussian latents); falls back to linear
    for (anti-)parallel or zero codes.

    >>> import torch
    >>> interpolate_codes(torch.zeros(2), torch.ones(2), 3)
    tensor([[0.0000, 0.0000],
            [0.5000, 0.5000],
            [1.0000, 1.0000]])
    >>> z = interpolate_codes(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), 3, mode="slerp")
    >>> [round(float(n), 4) for n in z.norm(dim=1)]
    [1.0, 1.5, 2.0]
    """
    z0, z1 = _vec(z0, "z0"), _vec(z1, "z1")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if mode not in ("linear", "slerp"):
        raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
    z1 = z1.to(z0.dtype)
    alpha = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device)[:, None]
    lin = (1 - alpha) * z0 + alpha * z1
    if mode == "linear":
        return lin
    n0, n1 = z0.norm(), z1.norm()
    if float(n0) == 0 or float(n1) == 0:
        return lin
    u0, u1 = z0 / n0, z1 / n1
    cos = torch.clamp((u0 * u1).sum(), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(torch.sin(omega)) < 1e-6:
        return lin
    dirs = (torch.sin((1 - alpha) * omega) * u0 + torch.sin(alpha * omega) * u1) / torch.sin(omega)
    out = dirs * ((1 - alpha) * n0 + alpha * n1)
    out[0], out[-1] = z0, z1
    return out


def fit_gaussian(codes: torch.Tensor, diagonal: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and covariance of codes ``[K, D]`` (e.g. ``model.codes.weight``):
    the unbiased sample covariance ``[D, D]``, or its diagonal ``[D]`` (variances) with
    ``diagonal=True`` (the full covariance is rank-deficient when K <= D; sampling adds a
    jitter).

    >>> import torch
    >>> mean, cov = fit_gaussian(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    >>> mean, cov
    (tensor([1., 1.]), tensor([[2., 2.],
            [2., 2.]]))
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or not codes.is_floating_point():
        raise ValueError(f"codes must be a floating-point tensor [K, D], got "
                         f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
    if codes.shape[0] < 2:
        raise ValueError(f"need at least 2 codes to fit a covariance, got {codes.shape[0]}")
    codes = codes.detach()
    mean = codes.mean(0)
    c = codes - mean
    if diagonal:
        return mean, c.square().sum(0) / (codes.shape[0] - 1)
    return mean, c.T @ c / (codes.shape[0] - 1)


def sample_codes(mean: torch.Tensor, cov: torch.Tensor, n: int, generator: Optional[torch.Generator] = None,
                 jitter: float = 1e-6) -> torch.Tensor:
    """``n`` codes ``[n, D]`` ~ N(mean, cov) (Sec. 6.1.3): ``cov [D, D]`` through its
    Cholesky factor (``jitter`` times the mean variance added to the diagonal, grown
    tenfold until the factorisation succeeds, at most to 1e-2), or ``cov [D]`` as a diagonal of variances.
    Deterministic for a seeded ``generator``.

    >>> import torch
    >>> mean, cov = torch.zeros(3), torch.eye(3)
    >>> a = sample_codes(mean, cov, 4, torch.Generator().manual_seed(0))
    >>> b = sample_codes(mean, cov, 4, torch.Generator().manual_seed(0))
    >>> a.shape, torch.equal(a, b)
    (torch.Size([4, 3]), True)
    """
    mean = _vec(mean, "mean")
    D = mean.shape[0]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(cov, torch.Tensor) or cov.shape not in ((D,), (D, D)):
        raise ValueError(f"cov must have shape [{D}] (diagonal) or [{D}, {D}], got "
                         f"{tuple(cov.shape) if isinstance(cov, torch.Tensor) else type(cov).__name__}")
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter!r}")
    cov = cov.detach().to(mean.dtype)
    eps = torch.empty(n, D, dtype=mean.dtype, device=mean.device)
    if generator is not None and generator.device != eps.device:
        raise ValueError(f"generator is on {generator.device}, the codes on {eps.device}")
    eps.normal_(generator=generator)
    if cov.dim() == 1:
        if (cov < 0).any():
            raise ValueError("variances must be >= 0")
        return mean + eps * cov.sqrt()
    cov = 0.5 * (cov + cov.T)
    scale = float(torch.diagonal(cov).mean().abs()) or 1.0
    eye = torch.eye(D, dtype=cov.dtype, device=cov.device)
    j = jitter
    while True:
        L, info = torch.linalg.cholesky_ex(cov + j * scale * eye)
        if int(info) == 0:
            return mean + eps @ L.T
        j = max(j * 10, 1e-8)
        if j > 1e-2:  # more would change the distribution, not just regularise it
            break
    raise ValueError("cov is not positive semi-definite (Cholesky failed even with jitter)")


def _codes2(z: torch.Tensor, name: str, dim: int) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [{dim}] or [B, {dim}]")
    z = z[None] if z.dim() == 1 else z
    if z.dim() != 2 or z.shape[1] != dim:
        raise ValueError(f"{name} must have shape [{dim}] or [B, {dim}], got {tuple(z.shape)}")
    return z


def posed_vertices(expression_model: nn.Module, vertices: torch.Tensor, z_id: torch.Tensor,
                   z_ex: torch.Tensor) -> torch.Tensor:
    """Vertices of a neutral (canonical) mesh ``[V, 3]`` or ``[B, V, 3]`` moved forward to
    the expression: ``v + F_ex(v, z_id, z_ex)`` (same shape). With a forward deformation
    this is exact and cheap, so a posed mesh is the neutral mesh (marching cubes of
    ``F_id``) with these vertices and the same faces.

    >>> import torch
    >>> from npht.models import ExpressionModel
    >>> expr = ExpressionModel(4, 2, hidden=8, layers=2, skip=None)  # zero-initialised: identity map
    >>> v = torch.rand(5, 3)
    >>> torch.equal(posed_vertices(expr, v, torch.zeros(4), torch.zeros(2)), v)
    True
    """
    if not isinstance(vertices, torch.Tensor) or vertices.dim() not in (2, 3) or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape [V, 3] or [B, V, 3], got "
                         f"{tuple(vertices.shape) if isinstance(vertices, torch.Tensor) else type(vertices).__name__}")
    single = vertices.dim() == 2
    v = vertices[None] if single else vertices
    zi = _codes2(z_id, "z_id", expression_model.z_id_dim).expand(v.shape[0], -1)
    ze = _codes2(z_ex, "z_ex", expression_model.z_ex_dim).expand(v.shape[0], -1)
    out = expression_model.deform(v, zi, ze)
    return out[0] if single else out


class ExpressionTransfer:
    """The deformation of an identity ``z_id`` under an expression ``z_ex`` (typically
    another person's, Sec. 6.4.1: the identity and expression spaces are disjoint, so the
    codes can be swapped). Codes ``[d]`` or ``[B, d]``.

    * ``transfer(x_neutral [B, N, 3]) -> x_posed``: the forward deformation;
      ``vertices(v)``: :func:`posed_vertices` (posed meshes from neutral ones).
    * ``canonical(x_posed) -> (x_c, converged)``: its inverse by root finding (eq. 4.22).
    * ``posed_sdf_fn(identity_model)``: ``points [B, N, 3] -> sdf [B, N]`` of the posed
      head, ``F_id(canonical(x_p), z_id)`` (for rendering or marching cubes in posed space;
      far from the surface, where the inverse may not converge, the value is that at the
      best iterate).
    """

    def __init__(self, expression_model: nn.Module, z_ex: torch.Tensor, z_id: torch.Tensor,
                 root_iters: int = 20, root_tol: float = 1e-5):
        self.expression_model = expression_model
        self.z_id = _codes2(z_id, "z_id", expression_model.z_id_dim)
        self.z_ex = _codes2(z_ex, "z_ex", expression_model.z_ex_dim)
        B = max(self.z_id.shape[0], self.z_ex.shape[0])
        if self.z_id.shape[0] not in (1, B) or self.z_ex.shape[0] not in (1, B):
            raise ValueError(f"z_id and z_ex batch sizes differ: {self.z_id.shape[0]} and {self.z_ex.shape[0]}")
        self.z_id, self.z_ex = self.z_id.expand(B, -1), self.z_ex.expand(B, -1)
        self.root_iters, self.root_tol = root_iters, root_tol

    def _codes(self, B: int):
        if self.z_id.shape[0] not in (1, B):
            raise ValueError(f"points batch {B} does not match the codes' batch {self.z_id.shape[0]}")
        return self.z_id.expand(B, -1), self.z_ex.expand(B, -1)

    def __call__(self, x_neutral: torch.Tensor) -> torch.Tensor:
        return self.transfer(x_neutral)

    def transfer(self, x_neutral: torch.Tensor) -> torch.Tensor:
        zi, ze = self._codes(x_neutral.shape[0])
        return self.expression_model.deform(x_neutral, zi, ze)

    def vertices(self, vertices: torch.Tensor) -> torch.Tensor:
        return posed_vertices(self.expression_model, vertices, self.z_id, self.z_ex)

    def canonical(self, x_posed: torch.Tensor, **kwargs):
        kwargs.setdefault("iters", self.root_iters)
        kwargs.setdefault("tol", self.root_tol)
        return invert_deformation(self.transfer, x_posed, **kwargs)

    def posed_sdf_fn(self, identity_model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(points: torch.Tensor) -> torch.Tensor:
            x_c, _ = self.canonical(points)
            zi, _ = self._codes(points.shape[0])
            return identity_model(x_c.to(points.dtype), zi)

        return fn


def transfer_expression(expression_model: nn.Module, z_ex_source: torch.Tensor, z_id_target: torch.Tensor,
                        **kwargs) -> ExpressionTransfer:
    """Expression transfer (Sec. 6.4.1): the source's expression code applied to the
    target identity, as an :class:`ExpressionTransfer` (forward deformation of the
    target's neutral points/vertices, its inverse, the posed SDF). ``kwargs``: root
    finding ``root_iters``, ``root_tol``.

    >>> import torch
    >>> from npht.models import ExpressionModel
    >>> expr = ExpressionModel(4, 2, hidden=8, layers=2, skip=None)
    >>> t = transfer_expression(expr, torch.randn(2), torch.randn(4))
    >>> t(torch.zeros(1, 3, 3)).shape
    torch.Size([1, 3, 3])
    """
    return ExpressionTransfer(expression_model, z_ex_source, z_id_target, **kwargs)
