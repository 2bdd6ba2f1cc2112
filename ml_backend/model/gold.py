"""The frozen gold set: a deterministic share of labelled cells held out of training, to score each version.

A cell is gold when a hash of its id falls below ``share`` (``HALI_GOLD_SHARE``), so the same cell is gold in
every retrain, on every worker, whatever order labels came in: the set only grows as more cells are labelled,
and no version ever trained on a cell it is scored on. Gold cells still count as labels (for the retrain
trigger, progress and exports); only the fit leaves them out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from label_config import TileTask

_HASH_SPAN = float(1 << 64)


class _Features(Protocol):
    def features(self, slide_id: str, cell_ids: list[str]) -> np.ndarray: ...


def gold_fraction(cell_id: str) -> float:
    """A uniform number in [0, 1) fixed by ``cell_id`` (blake2b, so it is the same in every process)."""
    digest = hashlib.blake2b(cell_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


def is_gold(cell_id: str, share: float) -> bool:
    """Whether ``cell_id`` belongs to the gold set that holds out ``share`` (0..1) of labelled cells."""
    return share > 0 and gold_fraction(cell_id) < share


def training_labels(labels: Mapping[str, str], share: float) -> dict[str, str]:
    """``labels`` (cell id -> target) without the gold cells: what the model may be fitted on."""
    if share <= 0:
        return dict(labels)
    return {cell: label for cell, label in labels.items() if not is_gold(cell, share)}


def gold_labels(labels: Mapping[str, str], share: float) -> dict[str, str]:
    """The gold cells of ``labels`` (cell id -> target)."""
    return {cell: label for cell, label in labels.items() if is_gold(cell, share)}


def gold_cells(tiles: Mapping[int, TileTask], labels: Mapping[str, str], share: float, targets: list[str],
               index: _Features) -> tuple[np.ndarray, np.ndarray]:
    """Features float32 (G, D) and target indices int64 (G,) of the gold cells among ``tiles``' cells."""
    gold = gold_labels(labels, share)
    code = {t: i for i, t in enumerate(targets)}
    by_slide: dict[str, list[str]] = {}
    for tile in tiles.values():
        by_slide.setdefault(tile.slide_id, []).extend(c.cell_id for c in tile.cells if gold.get(c.cell_id) in code)
    feats, ys = [], []
    for slide_id, cell_ids in by_slide.items():
        if cell_ids:
            feats.append(index.features(slide_id, cell_ids))
            ys.append(np.array([code[gold[c]] for c in cell_ids], dtype=np.int64))
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats).astype(np.float32), np.concatenate(ys)


def gold_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """``{"n", "accuracy", "balanced_accuracy"}`` of predictions int (G,) against gold targets int (G,).

    Balanced accuracy is the mean recall over the classes present in ``y_true``; both are None when G is 0.
    """
    n = len(y_true)
    if n == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None}
    right = np.asarray(y_pred) == np.asarray(y_true)
    recalls = [float(right[y_true == k].mean()) for k in np.unique(y_true)]
    return {"n": n, "accuracy": round(float(right.mean()), 4), "balanced_accuracy": round(float(np.mean(recalls)), 4)}
