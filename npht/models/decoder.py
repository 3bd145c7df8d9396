"""The thesis' tri-plane decoder TP_dec (Sec. 4.2.2, Fig. 4.2): a 5-layer MLP, 256 wide,
softplus with beta = 100, whose input is the aggregated tri-plane feature concatenated
with the point, and whose output is the SDF."""

from __future__ import annotations

import torch
from torch import nn

from npht.ops import triplane_sample


class TriplaneDecoder(nn.Module):
    """``TP_dec(x, F) -> sdf``: ``num_layers`` linear layers (``num_layers - 1`` hidden
    layers of width ``hidden``, softplus(beta)) mapping ``[F, x]`` to one value."""

    def __init__(self, feature_dim: int = 32, hidden: int = 256, num_layers: int = 5,
                 beta: float = 100.0, point_dim: int = 3):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2, got {num_layers}")
        dims = [feature_dim + point_dim] + [hidden] * (num_layers - 1) + [1]
        layers = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.Softplus(beta=beta))
        self.net = nn.Sequential(*layers)
        self.feature_dim = feature_dim

    def forward(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """features ``[..., feature_dim]``, points ``[..., 3]`` -> sdf ``[...]``."""
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"features must have {self.feature_dim} channels in the last dim, got {tuple(features.shape)}"
            )
        return self.net(torch.cat([features, points.to(features.dtype)], dim=-1)).squeeze(-1)

    def sdf(self, planes: torch.Tensor, points: torch.Tensor, **sample_kwargs) -> torch.Tensor:
        """SDF of ``points [B, N, 3]`` for tri-planes ``planes`` (sampled with
        :func:`npht.triplane_sample`, thesis default: sum aggregation)."""
        return self(triplane_sample(planes, points, **sample_kwargs), points)
