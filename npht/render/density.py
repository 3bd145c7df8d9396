"""VolSDF / MonoSDF Laplace density: ``sigma = (1/beta) * Psi_beta(-sdf)``, with
``Psi_beta`` the CDF of a zero-mean Laplace distribution of scale ``beta``, and a
learnable ``beta = |beta_param| + beta_min`` (thesis Sec. 5.2.2: initial 0.001, min 1e-4).

The thesis' eq. 3.6 prints the two branches swapped; this is VolSDF's definition (density
1/beta deep inside, where sdf < 0, decaying outside), which its renderer follows.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from npht.reference.render import laplace_density

__all__ = ["laplace_density", "LaplaceDensity"]


class LaplaceDensity(nn.Module):
    """Learnable Laplace density. ``forward(sdf, beta=None)``; ``beta`` overrides the
    learned one (the error-bound sampler evaluates other betas)."""

    def __init__(self, beta: float = 0.001, beta_min: float = 1e-4):
        super().__init__()
        if not beta > 0 or not beta_min >= 0:
            raise ValueError(f"beta must be > 0 and beta_min >= 0, got {beta!r}, {beta_min!r}")
        self.beta_param = nn.Parameter(torch.tensor(float(beta)))
        self.register_buffer("beta_min", torch.tensor(float(beta_min)))

    def get_beta(self) -> torch.Tensor:
        return self.beta_param.abs() + self.beta_min

    def forward(self, sdf: torch.Tensor, beta: Optional[torch.Tensor] = None) -> torch.Tensor:
        return laplace_density(sdf, self.get_beta() if beta is None else beta)
