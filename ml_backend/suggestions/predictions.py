"""Label Studio predictions for tiles, from class probabilities (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from label_config import NEUTRAL_LABEL, NOT_NUCLEUS_LABEL, LabelConfigError, TileTask, cells_to_regions


def tile_prediction(
    tile: TileTask, proba: np.ndarray | None, targets: Sequence[str], model_version: str, score: float,
    neutral: str = NEUTRAL_LABEL,
) -> dict[str, Any]:
    """One prediction for ``tile``: each cell labelled with its most likely target.

    ``proba`` is float (n_cells, K) in the order of ``tile.cells`` and of ``targets``
    (:attr:`label_config.LabelSet.targets`: the classes, then "Not a nucleus" when the config offers it,
    so a cell the model believes is no nucleus is suggested as such). None (no model yet) draws every
    cell with the ``neutral`` label (the config's own: :attr:`label_config.LabelSet.neutral`). Each
    region's ``score`` is its label's probability; the prediction's ``score`` is the tile's rank in the
    queue (lower is served sooner). Raises :class:`LabelConfigError` when ``proba`` has not one column per target.
    """
    if proba is None:
        result = cells_to_regions(tile.cells, tile, [neutral] * len(tile.cells))
    else:
        if proba.shape != (len(tile.cells), len(targets)):
            raise LabelConfigError(
                f"tile {tile.tile_id}: the model gives {proba.shape[-1]} probabilities per cell but the project's "
                f"config has {len(targets)} labels {list(targets)}; retrain after changing the labels (hali retrain)")
        best = proba.argmax(axis=1)
        scores = np.take_along_axis(proba, best[:, None], axis=1)[:, 0]
        result = cells_to_regions(tile.cells, tile, [targets[k] for k in best.tolist()], scores.tolist())
    return {"model_version": model_version, "score": float(score), "result": result}


def not_nucleus_mask(proba: np.ndarray, targets: Sequence[str]) -> np.ndarray:
    """(N,) bool: rows of ``proba`` (N, K), in ``targets`` order, whose most likely target is "Not a nucleus"."""
    if NOT_NUCLEUS_LABEL not in targets:
        return np.zeros(len(proba), dtype=bool)
    return np.asarray(proba).argmax(axis=1) == list(targets).index(NOT_NUCLEUS_LABEL)
