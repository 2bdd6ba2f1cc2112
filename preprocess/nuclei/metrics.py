"""Accuracy of a nucleus instance map against the truth: centroid detection and panoptic quality.

Used by ``bench/bench_segmentation.py`` (every segmenter) and by ``hali train-segmenter`` (validation each
epoch), so both report the same figures:

- detection: true and predicted centroids paired one-to-one (Hungarian) within ``radius_px`` (6 px at 40x
  is HoVer-Net's criterion); precision, recall, F1;
- panoptic quality PQ = DQ x SQ, instances matched at IoU > 0.5 (which makes each match unique).

Instance maps are int (rows, cols), 0 background, ids > 0 (not necessarily consecutive). Centroids are
float (N, 2) (x, y) = (column, row) in the map's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

DETECTION_RADIUS_PX = 6.0  # at 40x (0.25 um/px): 1.5 um, HoVer-Net's centroid criterion


@dataclass(frozen=True)
class ImageScore:
    """Counts for one image: centroid detection (tp, fp, fn) and, where instance maps exist, PQ terms."""

    tp: int
    fp: int
    fn: int
    pq_tp: int = 0
    pq_fp: int = 0
    pq_fn: int = 0
    iou_sum: float = 0.0


def match_centroids(true_xy: np.ndarray, pred_xy: np.ndarray, radius_px: float) -> int:
    """Number of (true, pred) pairs, each point used at most once, minimising total distance within ``radius_px``."""
    return int(matched_true(true_xy, pred_xy, radius_px).sum())


def matched_true(true_xy: np.ndarray, pred_xy: np.ndarray, radius_px: float) -> np.ndarray:
    """bool (N_true,): paired with a prediction within ``radius_px`` by a one-to-one Hungarian assignment."""
    found = np.zeros(len(true_xy), bool)
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return found
    distance = cdist(true_xy, pred_xy)
    rows, cols = linear_sum_assignment(np.where(distance <= radius_px, distance, 1e6))
    found[rows[distance[rows, cols] <= radius_px]] = True
    return found


def panoptic_terms(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[int, int, int, float]:
    """(tp, fp, fn, sum of matched IoU) of two instance maps; IoU > 0.5 makes each match unique."""
    true_ids, true_inv = np.unique(true_labels, return_inverse=True)
    pred_ids, pred_inv = np.unique(pred_labels, return_inverse=True)
    joint = np.bincount(true_inv.ravel() * len(pred_ids) + pred_inv.ravel(), minlength=len(true_ids) * len(pred_ids))
    joint = joint.reshape(len(true_ids), len(pred_ids))
    true_fg, pred_fg = true_ids > 0, pred_ids > 0
    inter = joint[np.ix_(true_fg, pred_fg)]
    union = joint.sum(1)[true_fg, None] + joint.sum(0)[None, pred_fg] - inter
    iou = inter / np.maximum(union, 1)
    matched = iou > 0.5
    tp = int(matched.sum())
    return tp, int(pred_fg.sum()) - tp, int(true_fg.sum()) - tp, float(iou[matched].sum())


def label_centroids(labels: np.ndarray) -> np.ndarray:
    """float (N, 2) (x, y) centres of mass of labels > 0, in order of label."""
    flat = labels.ravel().astype(np.int64)
    rows, cols = np.indices(labels.shape)
    areas = np.bincount(flat)
    cx = np.bincount(flat, weights=cols.ravel())
    cy = np.bincount(flat, weights=rows.ravel())
    present = np.flatnonzero(areas[1:] > 0) + 1
    return np.stack([cx[present], cy[present]], axis=1) / areas[present, None]


def score_instances(true_labels: np.ndarray, pred_labels: np.ndarray,
                    radius_px: float = DETECTION_RADIUS_PX) -> ImageScore:
    """Detection and PQ counts of ``pred_labels`` against ``true_labels`` (both int (rows, cols))."""
    true_xy, pred_xy = label_centroids(true_labels), label_centroids(pred_labels)
    tp = match_centroids(true_xy, pred_xy, radius_px)
    return ImageScore(tp, len(pred_xy) - tp, len(true_xy) - tp, *panoptic_terms(true_labels, pred_labels))


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """(precision, recall, F1); 0 where a denominator is 0."""
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def panoptic_quality(s: ImageScore) -> tuple[float, float, float]:
    """(DQ, SQ, PQ) of one score (an image's or a pooled one)."""
    dq = s.pq_tp / max(s.pq_tp + 0.5 * s.pq_fp + 0.5 * s.pq_fn, 1e-12)
    sq = s.iou_sum / max(s.pq_tp, 1)
    return dq, sq, dq * sq


def pooled(scores: Sequence[ImageScore]) -> ImageScore:
    """The sum of the counts of ``scores``."""
    names = [f.name for f in fields(ImageScore)]
    return ImageScore(*(sum(getattr(s, n) for s in scores) for n in names))
