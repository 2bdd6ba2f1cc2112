"""Tissue detection on a slide thumbnail.

A pixel is tissue when it is coloured (HSV saturation) or dark (255 - grey level) beyond an Otsu
threshold. Both thresholds are clamped to a band: the floor keeps a blank or JPEG-noisy white page from
being split into "tissue" and "background", and the ceiling keeps a thumbnail that is all tissue (a
cropped tile) from being split into dark and light tissue. This works for H&E (pink/purple) and for
IHC (brown DAB, blue haematoxylin) on a white background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2gray, rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

# Saturation in [0, 1]; darkness in grey levels [0, 255].
_SATURATION_BAND = (0.05, 0.12)
_DARKNESS_BAND = (15.0, 30.0)
_MIN_OBJECT_FRACTION = 1e-4


def detect_tissue(thumbnail_rgb: np.ndarray) -> np.ndarray:
    """Tissue mask of a thumbnail.

    ``thumbnail_rgb``: uint8 (rows, cols, 3) RGB on a white background.
    Returns bool (rows, cols): True on tissue, with small specks removed and holes filled. A blank
    thumbnail gives an all-False mask (the caller decides whether that is an error).
    """
    rgb = np.asarray(thumbnail_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"thumbnail must be (rows, cols, 3) RGB, got shape {rgb.shape}")
    saturation = rgb2hsv(rgb)[..., 1]
    darkness = 255.0 * (1.0 - rgb2gray(rgb))
    mask = (saturation > _clamped_otsu(saturation, _SATURATION_BAND)) | (
        darkness > _clamped_otsu(darkness, _DARKNESS_BAND)
    )
    return _clean(mask)


def _clamped_otsu(values: np.ndarray, band: tuple[float, float]) -> float:
    low, high = band
    if values.max() - values.min() < 1e-6:
        return low
    return float(np.clip(threshold_otsu(values), low, high))


def _clean(mask: np.ndarray) -> np.ndarray:
    min_size = max(4, int(_MIN_OBJECT_FRACTION * mask.size))
    mask = ndi.binary_opening(mask, structure=np.ones((2, 2), bool))
    mask = remove_small_objects(mask, max_size=min_size)
    return ndi.binary_fill_holes(mask)
