"""The thesis' expression model F_ex (Sec. 4.3): a forward deformation field
``F_ex(x, z_ex, z_id) = dx`` with ``x_posed = x + dx``, for x in the neutral (canonical)
space, conditioned on the (frozen, pre-trained) identity code and an auto-decoded
expression code.

Architecture (Sec. 4.3.2): a DeepSDF MLP, input 3 + d_id + d_ex (512 + 200), output 3,
8 layers of 1024 (NPHM D.3.1 uses 6 x 512: pass ``hidden=512, layers=6, skip=3,
skip_shrink=False``, as 512 is narrower than the input), softplus beta = 100, skip at layer 4. The output layer is zero-initialised, so the initial
deformation is exactly the identity map.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .deepsdf import SkipMLP

__all__ = ["ExpressionModel"]


class ExpressionModel(nn.Module):
    """``forward(x_neutral [B, N, 3], z_id [B, d_id], z_ex) -> offset [B, N, 3]`` with
    ``z_ex`` codes ``[B, d_ex]`` or expression indices ``[B]`` into ``codes`` (a sparse
    ``nn.Embedding(num_expressions, z_ex_dim)``, ~ N(0, init_std^2); the thesis draws
    z_ex from a standard normal). Codes may also be per point, ``[B, N, d]``."""

    def __init__(self, z_id_dim: int = 512, z_ex_dim: int = 200, hidden: int = 1024, layers: int = 8,
                 skip: Optional[int] = 4, num_expressions: int = 0, beta: float = 100.0,
                 init_std: float = 1.0, skip_shrink: bool = True):
        super().__init__()
        for name, value in (("z_id_dim", z_id_dim), ("z_ex_dim", z_ex_dim), ("num_expressions", num_expressions)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        self.z_id_dim, self.z_ex_dim, self.num_expressions = z_id_dim, z_ex_dim, num_expressions
        self.mlp = SkipMLP(3 + z_id_dim + z_ex_dim, 3, hidden, layers, skip, beta,
                           skip_shrink=skip_shrink).zero_last_()
        self.codes = nn.Embedding(num_expressions, z_ex_dim, sparse=True) if num_expressions else None
        if self.codes is not None:
            with torch.no_grad():
                self.codes.weight.normal_(0.0, init_std)

    def expression_latent(self, z_ex: torch.Tensor) -> torch.Tensor:
        if z_ex.is_floating_point():
            return z_ex
        if self.codes is None:
            raise ValueError("expression indices given but the model has no codes (num_expressions=0)")
        if z_ex.dim() != 1:
            raise ValueError(f"expression_index must have shape [B], got {tuple(z_ex.shape)}")
        if z_ex.numel() and (int(z_ex.min()) < 0 or int(z_ex.max()) >= self.num_expressions):
            raise ValueError(f"expression_index out of range [0, {self.num_expressions})")
        return self.codes(z_ex)

    def _expand(self, z, name, dim, B, N):
        if z.shape[-1] != dim or z.shape[0] != B or z.dim() not in (2, 3) or (z.dim() == 3 and z.shape[1] != N):
            raise ValueError(f"{name} must have shape [B={B}, {dim}] or [B, N={N}, {dim}], got {tuple(z.shape)}")
        return z[:, None, :].expand(-1, N, -1) if z.dim() == 2 else z

    def forward(self, x_neutral: torch.Tensor, z_id: torch.Tensor, z_ex: torch.Tensor) -> torch.Tensor:
        if x_neutral.dim() != 3 or x_neutral.shape[-1] != 3:
            raise ValueError(f"x_neutral must have shape [B, N, 3], got {tuple(x_neutral.shape)}")
        B, N, _ = x_neutral.shape
        z_id = self._expand(z_id, "z_id", self.z_id_dim, B, N)
        z_ex = self._expand(self.expression_latent(z_ex), "z_ex", self.z_ex_dim, B, N)
        dt = self.mlp.linears[0].weight.dtype  # inputs in the model's dtype
        return self.mlp(torch.cat([x_neutral.to(dt), z_id.to(dt), z_ex.to(dt)], dim=-1))

    def deform(self, x_neutral: torch.Tensor, z_id: torch.Tensor, z_ex: torch.Tensor) -> torch.Tensor:
        """``x_posed = x_neutral + F_ex(x_neutral, z_id, z_ex)``."""
        return x_neutral + self(x_neutral, z_id, z_ex)
