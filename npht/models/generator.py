"""The thesis' tri-plane generator TP_gen (Sec. 4.2.2): a DCGAN generator (Radford et al.)
with its last tanh removed, followed by a x4 upsample and a 3x3 convolution to 3 * C
channels, split into the three planes ``[B, 3, C, R, R]``.

DCGAN part, for ``resolution = R`` (a power of two >= 16) and ``k = log2(R) - 4``:
``z [B, z_dim]`` as a 1x1 map -> ConvTranspose(4, stride 1) to a 4x4 map (a linear layer
in convolutional form) -> ``k`` ConvTranspose(4, stride 2, pad 1) doublings to ``R/4``;
every layer but the last is followed by BatchNorm + ReLU, widths ``base * 2^(k-1)``
halving down to ``base``, the last producing ``dcgan_channels`` (default 3 * C). Then
Upsample(x4) + Conv2d(3x3, pad 1, 3 * C). The thesis configuration (R = 256, base 64)
is the classic DCGAN 4 -> 64 stack (512, 256, 128, 64 wide) and its x4 head. The thesis
does not name the upsampling mode: ``upsample_mode="nearest"`` (nn.Upsample's default)
leaves 4x4-texel steps in the planes, which the 3x3 head only softens and which show as
bands in rendered normals where the DCGAN output is coarse (16^2 in the cpu-demo preset);
``"bilinear"`` keeps the planes continuous.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["TriplaneGenerator"]


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n > 0 and (n & (n - 1)) == 0


class TriplaneGenerator(nn.Module):
    """``TP_gen(z) -> planes [B, 3, channels, resolution, resolution]``."""

    def __init__(self, z_dim: int = 512, channels: int = 32, resolution: int = 256, base: int = 64,
                 dcgan_channels: Optional[int] = None, batch_norm: bool = True,
                 upsample_mode: str = "nearest"):
        super().__init__()
        for name, value in (("z_dim", z_dim), ("channels", channels), ("base", base)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not _is_pow2(resolution) or resolution < 16:
            raise ValueError(f"resolution must be a power of two >= 16, got {resolution!r}")
        if upsample_mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"upsample_mode must be 'nearest', 'bilinear' or 'bicubic', got {upsample_mode!r}")
        dcgan_channels = 3 * channels if dcgan_channels is None else dcgan_channels
        if not isinstance(dcgan_channels, int) or dcgan_channels < 1:
            raise ValueError(f"dcgan_channels must be a positive int, got {dcgan_channels!r}")
        self.z_dim, self.channels, self.resolution = z_dim, channels, resolution

        k = resolution.bit_length() - 1 - 4  # stride-2 layers: 4 * 2^k = R / 4
        layers = []

        def block(cin, cout, stride, last):
            pad = 0 if stride == 1 else 1
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=last or not batch_norm))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))

        widths = [base * 2 ** (k - 1 - i) for i in range(k)]  # 4x4 ... R/8 maps
        if k == 0:
            block(z_dim, dcgan_channels, 1, last=True)
        else:
            block(z_dim, widths[0], 1, last=False)
            for i in range(k - 1):
                block(widths[i], widths[i + 1], 2, last=False)
            block(widths[-1], dcgan_channels, 2, last=True)
        self.dcgan = nn.Sequential(*layers)  # DCGAN without its final tanh
        self.upsample = nn.Upsample(scale_factor=4, mode=upsample_mode)
        self.head = nn.Conv2d(dcgan_channels, 3 * channels, 3, padding=1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02),
        biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, z_dim]`` -> planes ``[B, 3, channels, resolution, resolution]``."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {tuple(z.shape)}")
        x = self.head(self.upsample(self.dcgan(z[:, :, None, None])))
        R = self.resolution
        return x.reshape(z.shape[0], 3, self.channels, R, R)
