"""Classical nucleus segmentation: colour deconvolution, global + local thresholds, and a distance-transform watershed.

The nuclear signal is the larger of the haematoxylin optical density and a scaled DAB optical density, so
blue (H&E, IHC counterstain) and brown (DAB-positive IHC) nuclei are both found. A pixel is nuclear when it
is above a global floor (a fraction of Otsu's threshold, itself robust to a few very dark pixels) and above
the Gaussian-weighted mean of its neighbourhood, so pale nuclei beside dark ones still stand out.

:func:`label_nuclei` returns the instance map of one RGB image, :func:`segment_nuclei` measures it;
:func:`segment_slide` runs it window by window over the tissue of a slide (:func:`segment_windows` over a
chosen set of windows, e.g. one region) and returns nuclei in level-0 slide pixels. Every size is set in
microns and converted with the slide's ``mpp``, so the same settings serve 20x and 40x scans.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_local, threshold_otsu
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import watershed
from tqdm import tqdm

from preprocess.errors import SegmentationError

if TYPE_CHECKING:  # the reader is passed in; this module does no I/O of its own
    from adapters.slide_reader import OpenSlideReader

logger = logging.getLogger(__name__)

# Tuned on the CoNSeP train split with bench/bench_segmentation.py; see docs/segmentation.md.
MIN_AREA_UM2 = 4.5  # CoNSeP's median nucleus is 14 um^2; a tenth are under 4.5, many of them cut by the patch edge
MAX_AREA_UM2 = 400.0
PEAK_DISTANCE_UM = 2.0
SMOOTH_SIGMA_UM = 0.5
OPENING_RADIUS_UM = 0.5
LOCAL_BLOCK_UM = 15.0  # about two nuclei across: the neighbourhood a nucleus must be darker than
# Nuclear optical density below which nothing is a nucleus, so a blank or pale image gives none.
MIN_HEMATOXYLIN_OD = 0.03
OTSU_FRACTION = 0.7  # the global floor is this fraction of Otsu's threshold; the local test does the rest
OTSU_CLIP_PERCENTILE = 99.0  # a few black or DAB-saturated pixels would otherwise drag Otsu up to them
# rgb2hed gives DAB-positive nuclei 0.3-0.5 but haematoxylin ones 0.03-0.1; scaled, both clear the floor
# without the brown ones setting Otsu's threshold above the blue ones.
DAB_WEIGHT = 0.3


@dataclass(frozen=True, eq=False)
class Nuclei:
    """Segmented nuclei, all in the pixel frame of the image (or slide level 0) they came from.

    ``centroids_xy``: float64 (N, 2), (x = column, y = row).
    ``boxes``: int32 (N, 4), (x0, y0, w, h) bounding boxes.
    ``areas_px``: int32 (N,), pixel counts.
    """

    centroids_xy: np.ndarray
    boxes: np.ndarray
    areas_px: np.ndarray

    def __len__(self) -> int:
        return len(self.centroids_xy)

    @classmethod
    def empty(cls) -> Nuclei:
        """No nuclei."""
        return cls(np.zeros((0, 2)), np.zeros((0, 4), np.int32), np.zeros(0, np.int32))

    def take(self, keep: np.ndarray) -> Nuclei:
        """The nuclei selected by a boolean mask or an index array over N."""
        return Nuclei(self.centroids_xy[keep], self.boxes[keep], self.areas_px[keep])

    def shifted(self, dx: int, dy: int) -> Nuclei:
        """The same nuclei with ``(dx, dy)`` added to centroids and box origins."""
        offset = np.array([dx, dy, 0, 0], np.int32)
        return Nuclei(self.centroids_xy + (dx, dy), self.boxes + offset, self.areas_px)

    @classmethod
    def concat(cls, parts: list[Nuclei]) -> Nuclei:
        """All nuclei of ``parts``, in order."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.centroids_xy for p in parts]),
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.areas_px for p in parts]),
        )


def segment_nuclei(rgb: np.ndarray, mpp: float) -> Nuclei:
    """Nuclei in one RGB image.

    ``rgb``: uint8 (rows, cols, 3). ``mpp``: microns per pixel of that image.
    Objects smaller than :data:`MIN_AREA_UM2` or larger than :data:`MAX_AREA_UM2` are dropped.
    Returns :class:`Nuclei` in the image's own pixels.
    """
    return _measure(label_nuclei(rgb, mpp))


def label_nuclei(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """int32 (rows, cols) instance map of the nuclei in one RGB image: 0 is background, 1..N are nuclei.

    ``rgb``: uint8 (rows, cols, 3). ``mpp``: microns per pixel of that image. Objects smaller than
    :data:`MIN_AREA_UM2` or larger than :data:`MAX_AREA_UM2` are dropped, and the rest numbered 1..N.
    """
    check_input(rgb, mpp)
    density = _nuclear_density(rgb, sigma_px=SMOOTH_SIGMA_UM / mpp)
    min_area_px = MIN_AREA_UM2 / mpp**2
    block_px = 2 * round(LOCAL_BLOCK_UM / mpp / 2) + 1
    foreground = _foreground(density, block_px, opening_radius_px=max(1, round(OPENING_RADIUS_UM / mpp)))
    foreground = ndi.binary_fill_holes(remove_small_objects(foreground, max_size=int(min_area_px)))
    labels = _split_touching(foreground, min_distance_px=max(1, round(PEAK_DISTANCE_UM / mpp)))
    return _keep_sizes(labels, min_area_px, MAX_AREA_UM2 / mpp**2)


def nuclei_from_labels(labels: np.ndarray) -> Nuclei:
    """:class:`Nuclei` measured from an int (rows, cols) instance map numbered 1..N (0 is background)."""
    return _measure(labels)


def _keep_sizes(labels: np.ndarray, min_area_px: float, max_area_px: float) -> np.ndarray:
    """int32 label image with labels outside [min_area_px, max_area_px] removed and the rest numbered 1..N."""
    areas = np.bincount(labels.ravel())
    keep = (areas >= min_area_px) & (areas <= max_area_px)
    keep[0] = False
    lookup = np.zeros(len(areas), np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1)
    return lookup[labels]


def check_input(rgb: np.ndarray, mpp: float) -> None:
    """:class:`SegmentationError` unless ``rgb`` is uint8 (rows, cols, 3) and ``mpp`` > 0 (every segmenter's input)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SegmentationError(
            f"segment_nuclei needs a uint8 (rows, cols, 3) RGB image, got {rgb.dtype} {rgb.shape}; "
            "read it with OpenSlideReader.read_region"
        )
    if not mpp > 0:
        raise SegmentationError(f"mpp {mpp!r} must be > 0; pass the slide's microns per pixel, e.g. 0.5 for 20x")


def _nuclear_density(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    """float32 (rows, cols): max(haematoxylin OD, DAB_WEIGHT x DAB OD), smoothed with a Gaussian of ``sigma_px``."""
    hed = rgb2hed(rgb.astype(np.float32) / 255.0)
    density = np.maximum(hed[..., 0], DAB_WEIGHT * hed[..., 2])
    return ndi.gaussian_filter(density, sigma=sigma_px)


def _foreground(density: np.ndarray, block_px: int, opening_radius_px: int) -> np.ndarray:
    """bool (rows, cols): above the global floor and the local mean over ``block_px``, ragged edges opened."""
    threshold = MIN_HEMATOXYLIN_OD
    clipped = np.minimum(density, np.percentile(density, OTSU_CLIP_PERCENTILE))
    if clipped.max() - clipped.min() > 1e-6:
        threshold = max(threshold, OTSU_FRACTION * float(threshold_otsu(clipped)))
    local = threshold_local(density, block_px, method="gaussian")
    return ndi.binary_opening((density > threshold) & (density > local), structure=disk(opening_radius_px))


def _split_touching(foreground: np.ndarray, min_distance_px: int) -> np.ndarray:
    """int32 label image: each connected blob cut into nuclei by a watershed on its distance transform.

    Markers are the maxima of the smoothed distance over a (2 x min_distance_px + 1) square, one per
    connected plateau: a single maximum filter, where peak_local_max(labels=...) loops over the blobs.
    """
    blobs, n_blobs = ndi.label(foreground)
    if n_blobs == 0:
        return blobs.astype(np.int32)
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(foreground), sigma=1.0)
    peaks = foreground & (distance >= ndi.maximum_filter(distance, size=2 * min_distance_px + 1))
    markers, n_peaks = ndi.label(peaks, structure=np.ones((3, 3), bool))
    # A blob whose maxima a deeper neighbour suppressed keeps one marker of its own.
    unmarked = ~np.isin(blobs, blobs[peaks]) & foreground
    markers[unmarked] = blobs[unmarked] + n_peaks
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def _measure(labels: np.ndarray) -> Nuclei:
    """Centroid, box and area of every label > 0 of an int label image."""
    n = int(labels.max())
    if n == 0:
        return Nuclei.empty()
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape)
    areas = np.bincount(flat, minlength=n + 1)[1:]
    cy = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:]
    cx = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:]
    present = areas > 0
    slices = [s for s in ndi.find_objects(labels) if s is not None]
    boxes = np.array([(s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start) for s in slices])
    centroids = np.stack([cx[present], cy[present]], axis=1) / areas[present, None]
    return Nuclei(centroids.astype(np.float64), boxes.astype(np.int32).reshape(-1, 4), areas[present].astype(np.int32))


def segment_slide(
    reader: OpenSlideReader,
    tissue_mask: np.ndarray,
    mask_downsample: float,
    window_px: int = 2048,
    overlap_px: int = 64,
    progress: bool = True,
    segment: Callable[[np.ndarray, float], Nuclei] = segment_nuclei,
) -> Nuclei:
    """Nuclei of a whole slide, in level-0 pixels, sorted by (y, x).

    ``tissue_mask``: bool (rows, cols) over the slide, each mask pixel covering ``mask_downsample``
    level-0 pixels a side (e.g. :func:`preprocess.nuclei.tissue.detect_tissue` of a thumbnail). Windows of
    ``window_px`` with no tissue are skipped. Each window is read with a margin of at least
    ``overlap_px`` (widened to the largest nucleus' diameter), and a nucleus is kept only by the window
    whose core holds its centroid, so nuclei on window borders come out once and whole. Nuclei whose
    centroid is off the tissue are dropped. ``segment(rgb, mpp) -> Nuclei`` segments one window: by
    default the classical :func:`segment_nuclei`, or e.g. ``HoVerNetSegmenter(weights).segment_nuclei``.
    """
    _check_mask(tissue_mask, mask_downsample, reader.dimensions)
    windows = list(tissue_windows(tissue_mask, mask_downsample, reader.dimensions, window_px))
    logger.info("slide %s: segmenting %d windows of %d px", reader.path, len(windows), window_px)
    return segment_windows(reader, windows, tissue_mask, mask_downsample, overlap_px, progress, segment)


def segment_windows(
    reader: OpenSlideReader,
    windows: list[tuple[int, int, int, int]],
    tissue_mask: np.ndarray,
    mask_downsample: float,
    overlap_px: int = 64,
    progress: bool = False,
    segment: Callable[[np.ndarray, float], Nuclei] = segment_nuclei,
) -> Nuclei:
    """Nuclei whose centroid lies in one of ``windows`` (level-0 ``(x0, y0, width, height)`` cores, as
    :func:`tissue_windows` gives) and on the tissue, in level-0 pixels, sorted by (y, x).

    Window cores do not overlap, so any set of windows -- a region of a slide -- gives exactly the
    nuclei :func:`segment_slide` gives for those cores, and disjoint sets give disjoint nuclei.
    """
    mpp = reader.require_mpp()
    margin_px = max(overlap_px, math.ceil(2.0 * math.sqrt(MAX_AREA_UM2 / math.pi) / mpp) + 2)
    parts = [
        _segment_window(reader, window, margin_px, mpp, segment)
        for window in tqdm(windows, desc="segmenting", unit="window", disable=not progress)
    ]
    nuclei = Nuclei.concat(parts)
    nuclei = nuclei.take(_in_tissue(nuclei.centroids_xy, tissue_mask, mask_downsample))
    return nuclei.take(np.lexsort((nuclei.centroids_xy[:, 0], nuclei.centroids_xy[:, 1])))


def _check_mask(tissue_mask: np.ndarray, mask_downsample: float, dimensions: tuple[int, int]) -> None:
    width, height = dimensions
    expected = (height / mask_downsample, width / mask_downsample)
    if tissue_mask.ndim != 2 or any(abs(n - e) > 2 for n, e in zip(tissue_mask.shape, expected)):
        raise SegmentationError(
            f"tissue mask of shape {tissue_mask.shape} does not cover a {width}x{height} slide at downsample "
            f"{mask_downsample:.3f} (expected about {expected[0]:.0f} rows x {expected[1]:.0f} cols); "
            "pass the mask of the slide's own thumbnail with the downsample that thumbnail() returned"
        )


def tissue_windows(
    tissue_mask: np.ndarray, mask_downsample: float, dimensions: tuple[int, int], window_px: int
) -> Iterator[tuple[int, int, int, int]]:
    """(x0, y0, width, height) in level-0 px of each window core, in reading order, that touches tissue."""
    if window_px < 1:
        raise ValueError(f"window_px {window_px} must be >= 1")
    width, height = dimensions
    for y0 in range(0, height, window_px):
        for x0 in range(0, width, window_px):
            w, h = min(window_px, width - x0), min(window_px, height - y0)
            rows = slice(int(y0 / mask_downsample), math.ceil((y0 + h) / mask_downsample))
            cols = slice(int(x0 / mask_downsample), math.ceil((x0 + w) / mask_downsample))
            if tissue_mask[rows, cols].any():
                yield x0, y0, w, h


def _segment_window(
    reader: OpenSlideReader, window: tuple[int, int, int, int], margin_px: int, mpp: float,
    segment: Callable[[np.ndarray, float], Nuclei],
) -> Nuclei:
    """Nuclei, in level-0 px, whose centroid lies in the window core; cut-off objects at the read edge are dropped."""
    x0, y0, w, h = window
    read_x0, read_y0 = x0 - margin_px, y0 - margin_px
    read_w, read_h = w + 2 * margin_px, h + 2 * margin_px
    local = segment(reader.read_region(read_x0, read_y0, read_w, read_h), mpp)
    bx, by, bw, bh = local.boxes.T
    whole = (bx > 0) & (by > 0) & (bx + bw < read_w) & (by + bh < read_h)
    nuclei = local.take(whole).shifted(read_x0, read_y0)
    cx, cy = nuclei.centroids_xy.T
    return nuclei.take((cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h))


def _in_tissue(centroids_xy: np.ndarray, tissue_mask: np.ndarray, mask_downsample: float) -> np.ndarray:
    """bool (N,): centroid on the tissue mask, grown by one mask pixel so edge nuclei are kept."""
    grown = ndi.binary_dilation(tissue_mask, structure=np.ones((3, 3), bool))
    cols = np.clip((centroids_xy[:, 0] / mask_downsample).astype(int), 0, grown.shape[1] - 1)
    rows = np.clip((centroids_xy[:, 1] / mask_downsample).astype(int), 0, grown.shape[0] - 1)
    return grown[rows, cols]
