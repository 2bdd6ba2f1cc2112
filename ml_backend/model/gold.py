"""The frozen gold set: a deterministic share of labelled cells held out of training, to score each version.

A cell is gold when a hash of its id falls below ``share`` (``HALI_GOLD_SHARE``), so the same cell is gold in
every retrain, on every worker, whatever order labels came in: the set only grows as more cells are labelled,
and no version ever trained on a cell it is scored on. Gold cells still count as labels (for the retrain
trigger, progress and exports); only the fit leaves them out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

_HASH_SPAN = float(1 << 64)


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
