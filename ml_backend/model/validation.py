"""Checks every learner makes on what it is asked to fit (pure)."""

from __future__ import annotations

import numpy as np


def check_labels(y: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
    """``y`` as int64 (n_rows,) in [0, n_classes); ValueError naming what is wrong otherwise."""
    labels = np.asarray(y)
    if labels.shape != (n_rows,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be (N,) = ({n_rows},) integers, got shape {labels.shape} {labels.dtype}")
    if len(labels) == 0:
        raise ValueError("cannot fit on zero labels")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)
