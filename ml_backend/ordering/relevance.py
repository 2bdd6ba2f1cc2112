"""Sadafi et al. 2019's relevance score: which cells, and which tiles, are worth an annotator's time.

From T stochastic forward passes (MC dropout in the classifier head, and, where the segmenter is
stochastic, T boxes per cell) each cell gets

- a classification certainty ``U_c`` = share of the T passes whose argmax is the mode class (1/K..1);
- a detection certainty ``U_d`` = mean pairwise IoU of the cell's T boxes (0..1);
- a rare flag: mean probability of the rare class over the passes > ``rare_min_proba``;

and the cell score ``alpha * [U_c <= c_max] + beta * [U_d <= d_max] + gamma * [rare]``. A tile's score
is the sum over its unlabelled cells: the paper's ``#(U_c <= 0.8) + #(U_d <= 0.9) + 10 #rare``.

HALI's watershed segmenter is deterministic, so there are no stochastic boxes: callers pass no
detection certainty, ``U_d`` is 1 for every cell and the ``beta`` term contributes 0.
:func:`detection_certainty` is there for a stochastic segmenter (e.g. MC-dropout HoVer-Net).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RelevanceParams:
    """Weights and thresholds of the relevance score (the paper's values by default).

    ``rare_class`` is a class index; None picks the class the model believes rarest (lowest mean
    probability over all cells). Callers that know the labels pass :func:`rarest_class` instead.
    """

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 10.0
    class_certainty_max: float = 0.8
    detection_certainty_max: float = 0.9
    rare_min_proba: float = 0.2
    rare_class: int | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"relevance {name}={getattr(self, name)!r} must be >= 0")
        for name in ("class_certainty_max", "detection_certainty_max", "rare_min_proba"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"relevance {name}={getattr(self, name)!r} must lie in [0, 1]")


def as_passes(proba: np.ndarray, n_cells: int) -> np.ndarray:
    """``proba`` as (T, N, K) float64: an (N, K) array is one pass; ValueError on another shape."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[1] != n_cells or p.shape[0] < 1:
        raise ValueError(f"proba must be (N, K) or (T, N, K) with N = {n_cells}, got shape {np.shape(proba)}")
    return p


def class_certainty(passes: np.ndarray) -> np.ndarray:
    """``U_c`` (N,) float64: share of passes (T, N, K) whose argmax equals the cell's most frequent argmax."""
    votes = passes.argmax(axis=2)  # (T, N)
    counts = np.zeros(passes.shape[1:], dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(passes.shape[1]), votes.shape), votes), 1)
    return counts.max(axis=1) / passes.shape[0]


def detection_certainty(boxes: np.ndarray) -> np.ndarray:
    """``U_d`` (N,) float64: mean IoU over all pairs of a cell's boxes from T passes.

    ``boxes`` (T, N, 4) float as ``x0, y0, x1, y1`` (level-0 px, any one frame); a pass that lost the
    cell has a NaN row and contributes IoU 0 to its pairs. With T == 1 every cell has ``U_d`` = 1.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 3 or b.shape[2] != 4:
        raise ValueError(f"boxes must be (T, N, 4) as x0, y0, x1, y1, got shape {b.shape}")
    n_passes = b.shape[0]
    if n_passes == 1:
        return np.ones(b.shape[1])
    i, j = np.triu_indices(n_passes, k=1)
    return _iou(b[i], b[j]).mean(axis=0)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (P, N) of boxes ``a`` and ``b`` (P, N, 4); 0 where either box is NaN or both are empty."""
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    union = area_a + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    ok = np.isfinite(union) & (union > 0)
    return np.divide(inter, union, out=np.zeros_like(union), where=ok)


def rare_flag(passes: np.ndarray, rare_class: int, min_proba: float = 0.2) -> np.ndarray:
    """(N,) bool: mean probability of ``rare_class`` over the passes (T, N, K) above ``min_proba``."""
    if not 0 <= rare_class < passes.shape[2]:
        raise ValueError(f"rare class {rare_class} is not one of the {passes.shape[2]} classes")
    return passes[:, :, rare_class].mean(axis=0) > min_proba


def rarest_class(y_labelled: np.ndarray, n_classes: int) -> int:
    """The class with the fewest labels in ``y_labelled`` (L,) int (a class without any counts); ties: lowest index."""
    return int(np.argmin(np.bincount(np.asarray(y_labelled, dtype=np.int64), minlength=n_classes)[:n_classes]))


def cell_scores(
    proba: np.ndarray, params: RelevanceParams = RelevanceParams(), detection: np.ndarray | None = None
) -> np.ndarray:
    """Relevance score (N,) float64 of every cell from ``proba`` (T, N, K) or (N, K).

    ``detection`` (N,) is ``U_d`` (:func:`detection_certainty`); None means deterministic boxes (1).
    With a single pass ``U_c`` is 1 everywhere, so only the rare term can score.
    """
    passes = as_passes(proba, np.shape(proba)[-2])
    score = params.alpha * (class_certainty(passes) <= params.class_certainty_max)
    if detection is not None:
        u_d = np.asarray(detection, dtype=np.float64)
        if u_d.shape != (passes.shape[1],):
            raise ValueError(f"detection certainty must be ({passes.shape[1]},), got {u_d.shape}")
        score = score + params.beta * (u_d <= params.detection_certainty_max)
    rare = params.rare_class
    if rare is None:
        rare = int(np.argmin(passes.mean(axis=(0, 1))))
    return score + params.gamma * rare_flag(passes, rare, params.rare_min_proba)
