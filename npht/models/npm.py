"""The NPM baseline of the thesis (Sec. 5.2.2; NPHM Sec. D.3.1): a global DeepSDF, i.e. an
MLP of ``layers`` hidden layers of width ``hidden`` (8 x 1024), softplus with beta = 100,
the input ``[z_id, x]`` concatenated again at layer ``skip`` (4), with auto-decoded
identity codes (512)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .deepsdf import SkipMLP
from .latent import lookup_codes

__all__ = ["NPMBaseline"]


class NPMBaseline(nn.Module):
    """``NPMBaseline(num_identities, z_dim=512, hidden=1024, layers=8, skip=4)``:
    ``forward(points [B, N, 3], identity) -> sdf [B, N]`` with ``identity`` indices ``[B]``
    or codes ``[B, z_dim]``. Codes: sparse embedding ~ N(0, init_std^2) (0.01, the DeepSDF
    habit of small codes). ``geometric_init=True`` starts the SDF near a sphere of
    ``radius``. ``skip_shrink``: :class:`npht.models.SkipMLP`'s (NPHM's layout)."""

    def __init__(self, num_identities: int, z_dim: int = 512, hidden: int = 1024, layers: int = 8,
                 skip: Optional[int] = 4, beta: float = 100.0, init_std: float = 0.01,
                 geometric_init: bool = True, radius: float = 0.5, skip_shrink: bool = True):
        super().__init__()
        if not isinstance(num_identities, int) or num_identities < 1:
            raise ValueError(f"num_identities must be a positive int, got {num_identities!r}")
        if not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"z_dim must be a positive int, got {z_dim!r}")
        self.z_dim, self.num_identities = z_dim, num_identities
        self.mlp = SkipMLP(z_dim + 3, 1, hidden, layers, skip, beta, skip_shrink=skip_shrink)
        self.codes = nn.Embedding(num_identities, z_dim, sparse=True)
        with torch.no_grad():
            self.codes.weight.normal_(0.0, init_std)
        if geometric_init:
            self.mlp.geometric_init_(radius)

    def latent(self, identity: torch.Tensor) -> torch.Tensor:
        """Identity indices ``[B]`` (integer) -> codes ``[B, z_dim]``; a float tensor
        ``[B, z_dim]`` (e.g. a code being fitted) is returned as is."""
        return lookup_codes(self.codes, identity)

    def forward(self, points: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        z = self.latent(identity)
        if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] != z.shape[0]:
            raise ValueError(f"points must have shape [B={z.shape[0]}, N, 3], got {tuple(points.shape)}")
        dt = self.mlp.linears[0].weight.dtype  # inputs in the model's dtype (as IdentityModel)
        zx = z[:, None, :].expand(-1, points.shape[1], -1).to(dt)
        return self.mlp(torch.cat([zx, points.to(dt)], dim=-1)).squeeze(-1)

    def sdf_fn(self, identity: torch.Tensor, group: int = 1):
        """``points [B * group, n, 3] -> sdf [B * group, n]`` (row b * group + g: identity b)
        for :func:`npht.render.render`."""
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be an int >= 1, got {group!r}")
        z = self.latent(identity)
        z = z.repeat_interleave(group, 0) if group > 1 else z
        return lambda points: self(points, z)

    def sdf_and_gradient(self, points: torch.Tensor, identity: torch.Tensor):
        """SDF ``[B, N]`` and its gradient w.r.t. the points (autograd; differentiable
        again when grad mode is on; plain tensors with it off or under
        ``torch.inference_mode()``, computed outside it on copies of the inputs)."""
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                return self.sdf_and_gradient(points.clone(), identity.clone())
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            pts = points if points.requires_grad else points.detach().requires_grad_()
            sdf = self(pts, identity)
            (grad,) = torch.autograd.grad(sdf.sum(), pts, create_graph=create)
        if not create:
            sdf, grad = sdf.detach(), grad.detach()
        return sdf, grad
