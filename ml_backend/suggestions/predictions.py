"""Label Studio predictions for tiles, from class probabilities (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from label_config import NEUTRAL_LABEL, TileTask, cells_to_regions


def tile_prediction(
    tile: TileTask, proba: np.ndarray | None, classes: Sequence[str], model_version: str, score: float
) -> dict[str, Any]:
    """One prediction for ``tile``: each cell labelled with its most likely class.

    ``proba`` is float (n_cells, K) in the order of ``tile.cells`` and of ``classes``; None (no model yet)
    draws every cell as not-yet-classified. Each region's ``score`` is the class probability; the
    prediction's ``score`` is the tile's rank in the queue (lower is served sooner).
    """
    if proba is None:
        result = cells_to_regions(tile.cells, tile, [NEUTRAL_LABEL] * len(tile.cells))
    else:
        best = proba.argmax(axis=1)
        scores = np.take_along_axis(proba, best[:, None], axis=1)[:, 0]
        result = cells_to_regions(tile.cells, tile, [classes[k] for k in best.tolist()], scores.tolist())
    return {"model_version": model_version, "score": float(score), "result": result}
