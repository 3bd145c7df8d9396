"""DeepSDF-style MLP (Park et al.) shared by the NPM baseline and the expression network:
``layers`` hidden linear layers of width ``hidden`` with softplus(beta), the network input
concatenated again to the input of hidden layer ``skip`` (0-based index into the linear
layers, i.e. layer ``skip + 1`` counted from one), then a linear output layer. As in
DeepSDF, IGR and NPHM's code, the layer before the skip outputs ``hidden - in_dim``
features so that the concatenation is ``hidden`` wide (``skip_shrink``; off: it outputs
``hidden`` and the skip layer takes ``hidden + in_dim``, npht's layout before 2026-11-23)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["SkipMLP", "center_zero_level_"]


@torch.no_grad()
def center_zero_level_(net, bias: torch.Tensor, in_dim: int, radius: float, n: int = 4096) -> None:
    """Shift ``bias`` (the output layer's, in place) so that ``net``'s mean over ``n`` points
    of the sphere of ``radius`` is 0: the points in the last 3 of the ``in_dim`` inputs, the
    other inputs (codes, features) 0, the directions fixed (seed 0).

    The geometric initialisation is exact for ReLU. softplus(beta) exceeds ReLU by up to
    log(2)/beta per unit, most where pre-activations are small, and wide layers add it up: an
    8 x 1024 MLP with beta 100 starts about 0.6 above ``|x| - radius``, with no zero level in
    the unit ball. This correction puts the sphere back at ``radius``."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    x = torch.zeros(n, in_dim, dtype=bias.dtype, device=bias.device)
    x[:, -3:] = (dirs * radius).to(bias.dtype)
    bias.sub_(net(x).mean())


class SkipMLP(nn.Module):
    """``[..., in_dim] -> [..., out_dim]``. The skip concatenation is ``cat([h, input])``
    (divided by sqrt(2) when ``skip_scale`` is on, as in IGR, which keeps the geometric
    initialisation's variance)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, layers: int = 8,
                 skip: Optional[int] = 4, beta: float = 100.0, skip_scale: bool = True,
                 skip_shrink: bool = True):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden), ("layers", layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if skip is not None and not (isinstance(skip, int) and 1 <= skip < layers):
            raise ValueError(f"skip must be None or an int in [1, layers={layers}), got {skip!r}")
        self.in_dim, self.out_dim, self.hidden, self.skip = in_dim, out_dim, hidden, skip
        self.skip_scale = bool(skip_scale)
        dims_out = [hidden] * layers + [out_dim]
        dims_in = [in_dim] + [hidden] * layers
        self.skip_shrink = bool(skip_shrink) and skip is not None
        if self.skip_shrink:
            if hidden <= in_dim:
                raise ValueError(f"skip_shrink needs hidden > in_dim (the layer before the skip outputs hidden - "
                                 f"in_dim features), got hidden={hidden}, in_dim={in_dim}; pass skip_shrink=False (the "
                                 f"skip layer then takes hidden + in_dim)")
            dims_out[skip - 1] = hidden - in_dim
        elif skip is not None:
            dims_in[skip] = hidden + in_dim
        self.linears = nn.ModuleList([nn.Linear(dims_in[i], dims_out[i]) for i in range(layers + 1)])
        self.act = nn.Softplus(beta=beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        h = x
        for i, lin in enumerate(self.linears):
            if i == self.skip:
                h = torch.cat([h, inp], dim=-1)
                if self.skip_scale:
                    h = h / math.sqrt(2.0)
            h = lin(h)
            if i < len(self.linears) - 1:
                h = self.act(h)
        return h

    @torch.no_grad()
    def geometric_init_(self, radius: float = 0.5, generator: Optional[torch.Generator] = None) -> "SkipMLP":
        """Geometric initialisation (SAL/IGR) for a scalar output: hidden weights
        ~ N(0, 2/fan_out), biases 0, the output layer ~ N(sqrt(pi/fan_in), 1e-5) with bias
        ``-radius``, then shifted by :func:`center_zero_level_` (softplus is not ReLU): the
        function starts as a radial function of the points -- the last 3 inputs -- that is 0
        on the sphere of ``radius`` when the other inputs (latent codes) are small."""
        if self.out_dim != 1:
            raise ValueError(f"geometric init needs a scalar output, this MLP has out_dim={self.out_dim}")

        def normal(t, std, mean=0.0):
            t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) * std + mean)

        for i, lin in enumerate(self.linears):
            out_dim, in_dim = lin.weight.shape
            if i == len(self.linears) - 1:
                normal(lin.weight, 1e-5, math.sqrt(math.pi) / math.sqrt(in_dim))
                lin.bias.fill_(-radius)
            else:
                normal(lin.weight, math.sqrt(2.0) / math.sqrt(out_dim))
                lin.bias.zero_()
        center_zero_level_(self, self.linears[-1].bias, self.in_dim, radius)
        return self

    @torch.no_grad()
    def zero_last_(self) -> "SkipMLP":
        """Zero the output layer's weight and bias: the MLP starts as the zero function."""
        self.linears[-1].weight.zero_()
        self.linears[-1].bias.zero_()
        return self
