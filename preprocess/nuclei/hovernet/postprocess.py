"""HoVer-Net's post-processing: nuclear-pixel probability + horizontal/vertical maps -> instance label map.

As in the paper (Graham et al. 2019, section 3.4) and its reference code: pixels with probability >= 0.5
are nuclear; inside a nucleus the horizontal map rises from -1 at its left edge to +1 at its right edge
(the vertical map likewise from top to bottom), so where two touching nuclei meet the map falls steeply
from +1 to -1. Large Sobel filters of the two maps turn that into an "energy" that is high on such
borders; markers are the nuclear pixels away from them, and a marker-controlled watershed on the
smoothed (1 - energy) grows them back over the nuclear pixels.

All maps are (rows, cols) at the checkpoint's own scale (0.25 um/px for published HoVer-Net weights).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.special import comb
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

NUCLEUS_PROBABILITY = 0.5
SOBEL_KSIZE = 21  # the reference code's kernel at 0.25 um/px: wide enough to see a whole nucleus' ramp
BORDER_ENERGY = 0.4  # energy above which a nuclear pixel is a border, not a marker
MIN_OBJECT_PX = 10  # blobs and markers smaller than this are noise (0.6 um^2 at 0.25 um/px)
# cv2.getStructuringElement(MORPH_ELLIPSE, (5, 5)), which the reference code opens the markers with.
_ELLIPSE_5 = np.array([[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], bool)


def instances_from_maps(np_prob: np.ndarray, hv: np.ndarray, min_object_px: int = MIN_OBJECT_PX) -> np.ndarray:
    """int32 (rows, cols) instance map, 0 background and nuclei numbered 1..N.

    ``np_prob``: float (rows, cols), probability that a pixel is nuclear. ``hv``: float (rows, cols, 2),
    channel 0 the horizontal map, channel 1 the vertical one, each about -1..1 inside a nucleus.
    """
    if np_prob.ndim != 2 or hv.shape != (*np_prob.shape, 2):
        raise ValueError(f"need np_prob (rows, cols) and hv (rows, cols, 2), got {np_prob.shape} and {hv.shape}")
    blobs = remove_small_objects(np_prob >= NUCLEUS_PROBABILITY, max_size=min_object_px - 1)
    if not blobs.any():
        return np.zeros(np_prob.shape, np.int32)
    energy = border_energy(hv, blobs)
    basins = -ndi.gaussian_filter((1.0 - energy) * blobs, sigma=0.8, truncate=1.25)  # cv2's 3x3 Gaussian
    markers = ndi.binary_fill_holes(blobs & (energy < BORDER_ENERGY))
    markers = ndi.binary_opening(markers, structure=_ELLIPSE_5)
    markers = ndi.label(remove_small_objects(markers, max_size=min_object_px - 1))[0]
    labels = watershed(basins, markers=markers, mask=blobs)
    return relabel_sequential(labels)[0].astype(np.int32)


def border_energy(hv: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """float32 (rows, cols) in 0..1: how steeply the HV maps fall, highest on borders between nuclei, 0 off ``blobs``.

    Each map is min-max scaled to 0..1, differentiated along its own axis with a SOBEL_KSIZE Sobel filter,
    and the derivative min-max scaled and inverted, so a steep fall (a border) scores 1 and the rising
    ramp inside a nucleus about 0.
    """
    h = _minmax(hv[..., 0].astype(np.float64))
    v = _minmax(hv[..., 1].astype(np.float64))
    smooth, derive = _sobel_kernels(SOBEL_KSIZE)
    d_h = ndi.correlate1d(ndi.correlate1d(h, derive, axis=1, mode="mirror"), smooth, axis=0, mode="mirror")
    d_v = ndi.correlate1d(ndi.correlate1d(v, derive, axis=0, mode="mirror"), smooth, axis=1, mode="mirror")
    energy = np.maximum(1.0 - _minmax(d_h), 1.0 - _minmax(d_v)) - (~blobs)
    return np.clip(energy, 0.0, None).astype(np.float32)


def instance_types(labels: np.ndarray, type_map: np.ndarray) -> np.ndarray:
    """int32 (N,): the type of nuclei 1..N by majority vote of their pixels in ``type_map``.

    ``labels``: int (rows, cols) numbered 1..N. ``type_map``: int (rows, cols), 0 = background type.
    Type 0 wins only when a nucleus has no pixel of any other type, as in the reference code.
    """
    n = int(labels.max())
    n_types = int(type_map.max()) + 1 if type_map.size else 1
    inside = labels > 0
    counts = np.bincount(labels[inside].astype(np.int64) * n_types + type_map[inside].astype(np.int64),
                         minlength=(n + 1) * n_types).reshape(n + 1, n_types)[1:]
    if n_types == 1:
        return np.zeros(n, np.int32)
    best = counts[:, 1:].argmax(axis=1) + 1
    return np.where(counts[:, 1:].max(axis=1) > 0, best, 0).astype(np.int32)


def hv_maps_from_labels(labels: np.ndarray) -> np.ndarray:
    """float32 (rows, cols, 2): the ideal HV maps of an instance map (the training targets).

    Inside each nucleus, channel 0 is the column offset from its centre of mass and channel 1 the row
    offset, each side scaled on its own so the leftmost (topmost) pixel is -1 and the rightmost
    (bottommost) +1; background is 0.
    """
    hv = np.zeros((*labels.shape, 2), np.float32)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == index
        rows, cols = np.nonzero(inside)
        for channel, coords in ((0, cols), (1, rows)):
            offset = coords - np.round(coords.mean())
            scaled = offset.astype(np.float32)
            if (offset < 0).any():
                scaled[offset < 0] /= -offset.min()
            if (offset > 0).any():
                scaled[offset > 0] /= offset.max()
            hv[box][..., channel][rows, cols] = scaled
    return hv


def _minmax(x: np.ndarray) -> np.ndarray:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _sobel_kernels(ksize: int) -> tuple[np.ndarray, np.ndarray]:
    """(smoothing, derivative) 1-d kernels of OpenCV's Sobel of size ``ksize``: binomial weights, and the
    difference of the next-smaller binomial, oriented so that correlation is positive on a rising signal."""
    smooth = comb(ksize - 1, np.arange(ksize))
    derive = np.convolve(comb(ksize - 2, np.arange(ksize - 1)), [-1.0, 1.0])
    return smooth / smooth.sum(), derive / np.abs(derive).sum()
