"""The thesis' discriminator D (Sec. 4.2.2): pi-GAN's residual CoordConv discriminator
with progressive growing disabled, i.e. one fixed input resolution.

Layout for resolution R (64, 128, 256 or 512) and width ``w(r) = min(max_channels,
base * 256 / r)`` at spatial size r (pi-GAN: base 32, max 400, so 32 @256 ... 400 @16):

* from-image adapter: 1x1 conv ``in_channels -> w(R)`` + LeakyReLU(0.2);
* ``log2(R) - 1`` residual blocks r -> r/2 (down to 2x2): two 3x3 CoordConvs (the input
  with x/y coordinate channels in [-1, 1] appended), the second with stride 2, each
  followed by LeakyReLU(0.2) (weights: Kaiming normal for leaky ReLU 0.2, fan-in, as
  pi-GAN's kaiming_leaky_init); a 1x1 stride-2 conv shortcut; sum / sqrt(2);
* a 2x2 conv to one logit ``[B, 1]``.

Inputs are ``[B, C, R, R]`` (normal maps ``[B, R, R, 3]`` from the renderer: permute them;
an optional mask channel makes C = 4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Discriminator", "CoordConv2d"]

RESOLUTIONS = (64, 128, 256, 512)


class CoordConv2d(nn.Module):
    """Conv2d over the input concatenated with two coordinate channels (x, y in [-1, 1])."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        ys = torch.linspace(-1.0, 1.0, H, dtype=x.dtype, device=x.device)
        xs = torch.linspace(-1.0, 1.0, W, dtype=x.dtype, device=x.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([gx, gy])[None].expand(B, -1, -1, -1)
        return self.conv(torch.cat([x, coords], dim=1))


class _ResidualCoordBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            CoordConv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
            CoordConv2d(cout, cout, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2)
        # pi-GAN's kaiming_leaky_init on the block's (coord) convs; shortcut, adapter and final
        # layer keep PyTorch's default init, as there
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x):
        return (self.body(x) + self.shortcut(x)) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """``Discriminator(resolution=64, in_channels=3, base=32, max_channels=400)``:
    ``[B, in_channels, resolution, resolution] -> logits [B, 1]``. Accepts exactly its
    configured resolution and says so otherwise."""

    def __init__(self, resolution: int = 64, in_channels: int = 3, base: int = 32, max_channels: int = 400):
        super().__init__()
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        for name, value in (("in_channels", in_channels), ("base", base), ("max_channels", max_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.resolution, self.in_channels = resolution, in_channels

        def width(r):
            return max(1, min(max_channels, base * 256 // r))

        self.from_image = nn.Sequential(nn.Conv2d(in_channels, width(resolution), 1), nn.LeakyReLU(0.2))
        blocks, r = [], resolution
        while r > 2:
            blocks.append(_ResidualCoordBlock(width(r), width(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Conv2d(width(2), 1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        R, C = self.resolution, self.in_channels
        if images.dim() != 4 or images.shape[1] != C or images.shape[2] != R or images.shape[3] != R:
            raise ValueError(
                f"Discriminator configured for resolution {R} with {C} channels expects input "
                f"[B, {C}, {R}, {R}], got {tuple(images.shape)}"
            )
        return self.final(self.blocks(self.from_image(images))).reshape(images.shape[0], 1)
