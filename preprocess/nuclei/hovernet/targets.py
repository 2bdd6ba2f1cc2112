"""HoVer-Net training targets of one :class:`~preprocess.nuclei.hovernet.datasets.MaskSample`, as in the paper.

A sample is (optionally) flipped and rotated by a multiple of 90 degrees, reflect-padded by the model's
margin (as :class:`~preprocess.nuclei.hovernet.segmenter.HoVerNetSegmenter` pads at inference, so image borders
are seen the same way), and an input window of ``input_px`` is cut whose centre -- the ``output_px``
window the model predicts -- lies inside the image. Under that output window:

- ``np``: 1 on nuclear pixels, 0 on background;
- ``hv``: per instance, the horizontal (column) and vertical (row) offsets of each pixel from the
  instance's centre of mass, each side scaled to [-1, 1] (``hv_maps_from_labels``), computed on the
  cropped instance map as in the reference code, so a nucleus cut by the window has its own ramp;
- ``tp``: the nucleus type per pixel (0 background) when the sample has types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocess.nuclei.hovernet.datasets import MaskSample
from preprocess.nuclei.hovernet.postprocess import hv_maps_from_labels


@dataclass(frozen=True)
class TrainingPatch:
    """Model input and targets: ``rgb`` uint8 (input_px, input_px, 3); under the output window (out, out):
    ``inst`` int32 instance ids, ``np`` int64 0/1, ``hv`` float32 (out, out, 2) (horizontal, vertical) in
    [-1, 1], ``tp`` int64 types or None."""

    rgb: np.ndarray
    inst: np.ndarray
    np: np.ndarray
    hv: np.ndarray
    tp: np.ndarray | None


def augment(sample: MaskSample, rng: np.random.Generator) -> MaskSample:
    """``sample`` rotated by k x 90 degrees (k uniform in 0..3) and mirrored left-right with probability 1/2;
    the eight results are the symmetries of the square, drawn with ``rng``."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))

    def move(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        a = np.rot90(a, k, axes=(0, 1))
        return np.ascontiguousarray(a[:, ::-1] if flip else a)

    return MaskSample(sample.name, move(sample.rgb), move(sample.inst), move(sample.types), sample.source)


def window_origin(size_px: int, output_px: int, rng: np.random.Generator | None) -> int:
    """Start (in image pixels) of the output window along one axis: uniform over the positions that keep it
    inside the image (``rng``), or centred (``rng`` None); 0 when the image is smaller than the window."""
    room = max(size_px - output_px, 0)
    return int(rng.integers(room + 1)) if rng is not None else room // 2


def make_patch(sample: MaskSample, input_px: int, output_px: int, rng: np.random.Generator | None = None,
               augmentation: bool = False) -> TrainingPatch:
    """The training patch of ``sample`` for a model of ``input_px`` -> ``output_px`` (centre crop).

    ``rng`` None: centred window, no augmentation (validation). ``augmentation`` (needs ``rng``): random
    flips and 90-degree rotations before cropping.
    """
    if augmentation and rng is not None:
        sample = augment(sample, rng)
    margin = (input_px - output_px) // 2
    rows, cols = sample.inst.shape
    y0, x0 = window_origin(rows, output_px, rng), window_origin(cols, output_px, rng)
    # Pad by the margin on every side, and past the end when the image is smaller than the output window.
    extra_r, extra_c = max(output_px - rows, 0), max(output_px - cols, 0)
    pad = ((margin, margin + extra_r), (margin, margin + extra_c))
    rgb = np.pad(sample.rgb, (*pad, (0, 0)), mode="reflect")[y0 : y0 + input_px, x0 : x0 + input_px]
    out = (slice(y0, y0 + output_px), slice(x0, x0 + output_px))
    inst = np.pad(sample.inst, ((0, extra_r), (0, extra_c)))[out]
    types = None if sample.types is None else np.pad(sample.types, ((0, extra_r), (0, extra_c)))[out]
    return TrainingPatch(
        rgb=np.ascontiguousarray(rgb),
        inst=np.ascontiguousarray(inst),
        np=(inst > 0).astype(np.int64),
        hv=hv_maps_from_labels(inst),
        tp=None if types is None else types.astype(np.int64),
    )
