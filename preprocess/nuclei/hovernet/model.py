"""HoVer-Net (Graham et al. 2019): a pre-activated ResNet-50 encoder and three dense decoder branches.

The branches predict, for every output pixel, the nuclear-pixel logits (``np``, 2 channels), the horizontal and
vertical distance of the pixel to its nucleus' centre of mass (``hv``, 2 channels, each in [-1, 1]), and,
when the checkpoint was trained with types, the nucleus-type logits (``tp``, ``n_types`` channels, 0 is
background).

Two modes, as in the reference implementation (vqdang/hover_net, also tiatoolbox):

- ``"original"`` (the paper; CoNSeP, Kumar, CPM17 checkpoints): 270 x 270 input, 80 x 80 output, 5 x 5
  decoder convolutions, no padding before the stem.
- ``"fast"`` (PanNuke, MoNuSAC checkpoints): 256 x 256 input, 164 x 164 output, 3 x 3 decoder convolutions,
  TensorFlow-style "same" padding before the stem.

The output is the centre of the input: ``(input - output) / 2`` pixels are lost on each side. Sub-module
names ("conv0./", "d0.units.1.preact/bn", "decoder.np.u3.dense.blk_bna.bn", ...) are those of the reference
checkpoints, so their state dicts load without renaming. Inputs are float RGB in 0..255, NCHW.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModeSpec:
    """Geometry of one mode: patch sides in pixels, decoder kernel size, encoder skip crops."""

    input_px: int
    output_px: int
    decoder_ksize: int
    pad_stem: bool
    crop_d0_px: int  # how much the full-resolution skip is cropped to match the decoder
    crop_d1_px: int

    @property
    def margin_px(self) -> int:
        """Pixels of context on each side of the output patch."""
        return (self.input_px - self.output_px) // 2


MODES = {
    "original": ModeSpec(270, 80, 5, pad_stem=False, crop_d0_px=184, crop_d1_px=72),
    "fast": ModeSpec(256, 164, 3, pad_stem=True, crop_d0_px=92, crop_d1_px=36),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5)


def _conv(c_in: int, c_out: int, ksize: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, ksize, stride=stride, padding=0, groups=groups, bias=bias)


def _centre_crop(x: torch.Tensor, crop_px: int) -> torch.Tensor:
    """x (N, C, H, W) with ``crop_px`` rows and columns removed, half before and half after."""
    start = crop_px // 2
    return x[:, :, start : x.shape[2] - (crop_px - start), start : x.shape[3] - (crop_px - start)]


class SamePad(nn.Module):
    """Zero padding that makes the next (ksize, stride) convolution behave like TensorFlow's "same"."""

    def __init__(self, ksize: int, stride: int) -> None:
        super().__init__()
        self.ksize, self.stride = ksize, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        remainder = x.shape[2] % self.stride
        total = max(self.ksize - (self.stride if remainder == 0 else remainder), 0)
        before = total // 2
        return F.pad(x, (before, total - before, before, total - before))


class ResidualStage(nn.Module):
    """Pre-activated bottleneck units (1x1, 3x3, 1x1) with a shared running shortcut, closed by BN-ReLU.

    The first unit has no pre-activation: the previous stage's ``blk_bna`` already ends in BN-ReLU.
    """

    def __init__(self, c_in: int, c_mid: int, c_out: int, n_units: int, stride: int) -> None:
        super().__init__()
        self.units = nn.ModuleList()
        for index in range(n_units):
            unit_in = c_in if index == 0 else c_out
            unit_stride = stride if index == 0 else 1
            layers: list[tuple[str, nn.Module]] = []
            if index > 0:
                layers += [("preact/bn", _bn(unit_in)), ("preact/relu", nn.ReLU(inplace=True))]
            layers += [
                ("conv1", _conv(unit_in, c_mid, 1)),
                ("conv1/bn", _bn(c_mid)),
                ("conv1/relu", nn.ReLU(inplace=True)),
                ("conv2/pad", SamePad(3, unit_stride)),
                ("conv2", _conv(c_mid, c_mid, 3, stride=unit_stride)),
                ("conv2/bn", _bn(c_mid)),
                ("conv2/relu", nn.ReLU(inplace=True)),
                ("conv3", _conv(c_mid, c_out, 1)),
            ]
            self.units.append(nn.Sequential(OrderedDict(layers)))
        self.shortcut = _conv(c_in, c_out, 1, stride=stride) if (c_in != c_out or stride != 1) else None
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(c_out)), ("relu", nn.ReLU(inplace=True))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        for unit in self.units:
            x = unit(x) + shortcut
            shortcut = x
        return self.blk_bna(x)


class DenseStage(nn.Module):
    """Dense units (BN-ReLU-1x1, BN-ReLU-grouped kxk, both "valid"), each output concatenated to its
    centre-cropped input, closed by BN-ReLU."""

    def __init__(self, c_in: int, ksize: int, n_units: int, c_mid: int = 128, growth: int = 32, groups: int = 4):
        super().__init__()
        self.units = nn.ModuleList()
        channels = c_in
        for _ in range(n_units):
            self.units.append(nn.Sequential(OrderedDict([
                ("preact_bna/bn", _bn(channels)),
                ("preact_bna/relu", nn.ReLU(inplace=True)),
                ("conv1", _conv(channels, c_mid, 1)),
                ("conv1/bn", _bn(c_mid)),
                ("conv1/relu", nn.ReLU(inplace=True)),
                ("conv2", _conv(c_mid, growth, ksize, groups=groups)),
            ])))
            channels += growth
        self.blk_bna = nn.Sequential(OrderedDict([("bn", _bn(channels)), ("relu", nn.ReLU(inplace=True))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            new = unit(x)
            x = torch.cat([_centre_crop(x, x.shape[2] - new.shape[2]), new], dim=1)
        return self.blk_bna(x)


class Unpool2x(nn.Module):
    """Nearest-neighbour 2x upsampling as a Kronecker product with a 2x2 block of ones (TensorPack's
    FixedUnpooling). The block is a buffer because the reference checkpoints carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        block = self.unpool_mat.to(x.dtype)[None, None, None, :, None, :]
        return (x[:, :, :, None, :, None] * block).reshape(n, c, 2 * h, 2 * w)


def _decoder_branch(out_channels: int, ksize: int) -> nn.Sequential:
    """u3 (1024 -> 512 channels), u2 (512 -> 256), u1 (256 -> 64, "same"), u0 (BN-ReLU-1x1 head with bias)."""
    u3 = nn.Sequential(OrderedDict([
        ("conva", _conv(1024, 256, ksize)), ("dense", DenseStage(256, ksize, 8)), ("convf", _conv(512, 512, 1)),
    ]))
    u2 = nn.Sequential(OrderedDict([
        ("conva", _conv(512, 128, ksize)), ("dense", DenseStage(128, ksize, 4)), ("convf", _conv(256, 256, 1)),
    ]))
    u1 = nn.Sequential(OrderedDict([("conva/pad", SamePad(ksize, 1)), ("conva", _conv(256, 64, ksize))]))
    u0 = nn.Sequential(OrderedDict([
        ("bn", _bn(64)), ("relu", nn.ReLU(inplace=True)), ("conv", _conv(64, out_channels, 1, bias=True)),
    ]))
    return nn.Sequential(OrderedDict([("u3", u3), ("u2", u2), ("u1", u1), ("u0", u0)]))


class HoVerNet(nn.Module):
    """HoVer-Net in ``mode`` "original" or "fast"; ``n_types`` adds the type branch (None: no ``tp``).

    ``forward(x)``: x float (N, 3, H, W), RGB 0..255, H = W = ``spec.input_px`` (or more generally
    8k + 6 for "original" and 8k for "fast"); returns ``{"tp"?, "np", "hv"}`` of raw outputs, each
    (N, C, H - 2 margin, W - 2 margin). ``np`` and ``tp`` are logits, ``hv`` is (horizontal, vertical).
    """

    def __init__(self, mode: str = "fast", n_types: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"HoVer-Net mode {mode!r} is not one of {sorted(MODES)}")
        self.mode, self.n_types, self.spec = mode, n_types, MODES[mode]
        stem: list[tuple[str, nn.Module]] = [("pad", SamePad(7, 1))] if self.spec.pad_stem else []
        stem += [("/", _conv(3, 64, 7)), ("bn", _bn(64)), ("relu", nn.ReLU(inplace=True))]
        self.conv0 = nn.Sequential(OrderedDict(stem))
        self.d0 = ResidualStage(64, 64, 256, 3, stride=1)
        self.d1 = ResidualStage(256, 128, 512, 4, stride=2)
        self.d2 = ResidualStage(512, 256, 1024, 6, stride=2)
        self.d3 = ResidualStage(1024, 512, 2048, 3, stride=2)
        self.conv_bot = _conv(2048, 1024, 1)
        ksize = self.spec.decoder_ksize
        branches = [("tp", n_types)] if n_types else []
        branches += [("np", 2), ("hv", 2)]
        self.decoder = nn.ModuleDict(OrderedDict((name, _decoder_branch(ch, ksize)) for name, ch in branches))
        self.upsample2x = Unpool2x()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        d0 = self.d0(self.conv0(x / 255.0))
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        d0 = _centre_crop(d0, self.spec.crop_d0_px)
        d1 = _centre_crop(d1, self.spec.crop_d1_px)
        out: dict[str, torch.Tensor] = {}
        for name, branch in self.decoder.items():
            u3 = branch.u3(self.upsample2x(d3) + d2)
            u2 = branch.u2(self.upsample2x(u3) + d1)
            u1 = branch.u1(self.upsample2x(u2) + d0)
            out[name] = branch.u0(u1)
        return out
