"""Which stain a slide shows, from its thumbnail: H&E, or an IHC (DAB brown over a haematoxylin counterstain).

The learned segmenter was trained on H&E and finds almost nothing on IHC (docs/segmentation.md: Ki-67 F1
0.007), so ``HALI_SEGMENTER=auto`` uses it on H&E and the classical segmenter on IHC. The rule, measured on
the data in ``../shared/data``: the share of tissue pixels whose DAB optical density (``rgb2hed``) exceeds
0.15 is at most 0.0003 on H&E (the CMU slide, CoNSeP, the stardist and tiatoolbox samples) and at least
0.0016 on IHC (all six DeepLIIF Ki-67 tiles, scikit-image's IHC image); the cut is 0.001.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from skimage.color import rgb2hed

Stain = Literal["he", "ihc"]
DAB_OD_MIN = 0.15
IHC_DAB_SHARE_MIN = 0.001
_BACKGROUND_MEAN_MIN = 220  # mean RGB at or above this is glass, not tissue


def dab_share(rgb: np.ndarray, tissue: np.ndarray | None = None) -> float:
    """Share of tissue pixels of uint8 (rows, cols, 3) ``rgb`` with DAB optical density > :data:`DAB_OD_MIN`.

    ``tissue``: bool (rows, cols); default: pixels darker than glass.
    """
    rgb = np.asarray(rgb)[..., :3]
    if tissue is None or tissue.shape != rgb.shape[:2]:
        tissue = rgb.astype(np.float32).mean(axis=-1) < _BACKGROUND_MEAN_MIN
    if not tissue.any():
        return 0.0
    dab = rgb2hed(rgb[tissue].reshape(-1, 1, 3).astype(np.float32) / 255.0)[..., 2]
    return float(np.mean(dab > DAB_OD_MIN))


def detect_stain(rgb: np.ndarray, tissue: np.ndarray | None = None) -> Stain:
    """``"ihc"`` when DAB brown covers more than :data:`IHC_DAB_SHARE_MIN` of the tissue, else ``"he"``."""
    return "ihc" if dab_share(rgb, tissue) > IHC_DAB_SHARE_MIN else "he"
