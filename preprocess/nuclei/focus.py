"""Out-of-focus tissue: nuclei a pathologist cannot classify are not offered for labelling.

A scanner that misses the focal plane leaves patches of a slide blurred; nuclei are still found there, but
their class cannot be read, so every suggestion on them costs a correction. Each window is judged in blocks of
:data:`BLOCK_UM` micrometres with scikit-image's :func:`~skimage.measure.blur_effect` (Crete-Roffet et al.
2007: how much a further blur changes the block; 0 sharp, 1 fully blurred), on the grey image resampled to
:data:`WORKING_MPP` so that slides scanned at 20x and 40x are judged alike. Nuclei whose centroid lies in a
block scoring above the threshold are dropped.

Background pixels in a block, and white beyond the slide's edge, take the mean grey of the block's tissue first:
a tissue border is a sharp edge however blurred the tissue is. A block with less than half tissue is not
judged, and keeps its nuclei.

Measured (docs/segmentation.md, "Out-of-focus tissue"): the blurriest in-focus block of CoNSeP's 14 test
images scores 0.36, of the CMU demo slide 0.36, of the three bundled H&E / IHC images 0.46 and of the Ki-67
IHC tiles 0.51; blurred by a Gaussian of 1 / 1.5 / 2 / 3 um, 5.5 / 84 / 99 / 100 % of CoNSeP test and CMU
blocks score above the default threshold, 0.6 (``bench/bench_focus.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image
from skimage.measure import blur_effect

from preprocess.nuclei.segment import Nuclei

BLOCK_UM = 50.0
WORKING_MPP = 0.5
DEFAULT_MAX_BLUR = 0.6
MIN_CONTRAST = 0.02  # grey std (0..1) under which a block is blank or empty tissue: not judged
MIN_TISSUE = 0.5  # share of a block's pixels darker than WHITE under which it is mostly background: not judged
WHITE = 242 / 255  # slide background; pale tissue (lumen, fat, loose stroma) is darker than this

Segmenter = Callable[[np.ndarray, float], Nuclei]


def blur_scores(rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores, row_edges, col_edges)``: blur of each block of ``rgb`` (uint8 (rows, cols, 3) at ``mpp``).

    ``scores`` float (block rows, block cols) in [0, 1], NaN for a block too uniform or too empty to judge (a
    tissue edge in white background scores high however sharp); block ``(i, j)``
    covers rows ``row_edges[i]:row_edges[i + 1]`` and columns ``col_edges[j]:col_edges[j + 1]`` of ``rgb``.
    Blocks are about :data:`BLOCK_UM` a side; the image is cut into a whole number of them.
    """
    rows, cols = rgb.shape[:2]
    factor = mpp / WORKING_MPP
    grey = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
    if abs(factor - 1.0) > 0.05:
        size = (max(1, round(cols * factor)), max(1, round(rows * factor)))
        grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
    grey = grey.astype(np.float64) / 255.0
    block_px = BLOCK_UM / WORKING_MPP
    work_rows = np.linspace(0, grey.shape[0], max(1, round(grey.shape[0] / block_px)) + 1).round().astype(int)
    work_cols = np.linspace(0, grey.shape[1], max(1, round(grey.shape[1] / block_px)) + 1).round().astype(int)
    scores = np.full((len(work_rows) - 1, len(work_cols) - 1), np.nan)
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            block = grey[work_rows[i]:work_rows[i + 1], work_cols[j]:work_cols[j + 1]]
            tissue = block < WHITE
            if min(block.shape) < 8 or tissue.mean() < MIN_TISSUE:
                continue
            # background (and white beyond the slide's edge) takes the tissue's mean grey: a tissue border
            # is a sharp edge however blurred the tissue is, and would read as focus
            block = np.where(tissue, block, block[tissue].mean())
            if block.std() >= MIN_CONTRAST:
                scores[i, j] = blur_effect(block)
    row_edges = (work_rows * rows / grey.shape[0]).round().astype(int)
    col_edges = (work_cols * cols / grey.shape[1]).round().astype(int)
    return scores, row_edges, col_edges


def in_focus(centroids_xy: np.ndarray, rgb: np.ndarray, mpp: float, max_blur: float = DEFAULT_MAX_BLUR) -> np.ndarray:
    """bool (N,): each centroid (float (N, 2) as (x, y) in ``rgb``'s pixels) lies in a block that is not blurred."""
    xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    if not len(xy) or max_blur >= 1.0:
        return np.ones(len(xy), bool)
    scores, row_edges, col_edges = blur_scores(rgb, mpp)
    i = np.clip(np.searchsorted(row_edges, xy[:, 1], side="right") - 1, 0, scores.shape[0] - 1)
    j = np.clip(np.searchsorted(col_edges, xy[:, 0], side="right") - 1, 0, scores.shape[1] - 1)
    return ~(scores[i, j] > max_blur)  # NaN (not judged) keeps its nuclei


def focus_checked(segment: Segmenter, max_blur: float = DEFAULT_MAX_BLUR) -> Segmenter:
    """``segment`` (``(rgb, mpp) -> Nuclei``) without the nuclei of blurred blocks; ``max_blur`` >= 1: unchanged.

    The returned segmenter counts the nuclei it has left out in its ``left_out`` attribute. A nucleus near a
    window's edge is judged in each window that reads it, and counted in each; the slide keeps it from one.
    """
    if max_blur >= 1.0:
        return segment

    @functools.wraps(segment)  # __wrapped__: the segmenter inside
    def segment_in_focus(rgb: np.ndarray, mpp: float) -> Nuclei:
        nuclei = segment(rgb, mpp)
        if not len(nuclei):
            return nuclei
        keep = in_focus(nuclei.centroids_xy, rgb, mpp, max_blur)
        segment_in_focus.left_out += int((~keep).sum())  # type: ignore[attr-defined]
        return nuclei.take(keep)

    segment_in_focus.left_out = 0  # type: ignore[attr-defined]  # nuclei dropped so far, for the run's summary
    return segment_in_focus
