"""A small U-Net for nuclei on H&E: per pixel, a nucleus logit and a normalised distance to the nucleus edge.

Input: float32 (batch, 3, rows, cols), RGB scaled to 0..1, rows and cols multiples of ``2 ** depth``.
Output: float32 (batch, 2, rows, cols): channel 0 the foreground logit, channel 1 the distance map logit
(sigmoid gives each nuclear pixel's distance to its nucleus' edge divided by that nucleus' largest distance,
so every nucleus, large or small, peaks at 1 in its centre; see :mod:`preprocess.nuclei.learned`).
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUT_CHANNELS = 2  # foreground, normalised distance


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class NucleusUNet(nn.Module):
    """U-Net with ``len(channels)`` levels (``len(channels) - 1`` poolings) and ``channels[i]`` at level i."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 48, 64)) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip((3, *channels[:-1]), channels))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(deep, shallow, 2, stride=2) for deep, shallow in zip(channels[:0:-1], channels[-2::-1])
        )
        self.merge = nn.ModuleList(_block(2 * c, c) for c in channels[-2::-1])
        self.head = nn.Conv2d(channels[0], OUTPUT_CHANNELS, 1)

    @property
    def stride(self) -> int:
        """Rows and cols of the input must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    def fuse_batchnorm(self) -> NucleusUNet:
        """Fold each BatchNorm's running statistics into the conv before it (inference only); returns self."""
        for block in [*self.down, *self.merge]:
            for i in (0, 3):
                conv, bn = block[i], block[i + 1]
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True)
                with torch.no_grad():
                    fused.weight.copy_(conv.weight * scale[:, None, None, None])
                    fused.bias.copy_(bn.bias - bn.running_mean * scale)
                block[i], block[i + 1] = fused, nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, skips[-2::-1]):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
