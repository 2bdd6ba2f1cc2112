"""Accuracy and speed of the nucleus segmenter on real annotated images.

    .venv/bin/python bench/bench_segmentation.py [--split test] [--limit N] [--segmenter module:function]

Scores a label function ``f(rgb uint8 (rows, cols, 3), mpp) -> int (rows, cols) instance map``
(default :func:`preprocess.segment.label_nuclei`) on

- CoNSeP 256x256 patches at 40x (mpp 0.25) with instance maps: detection precision/recall/F1, each
  true and predicted centroid paired at most once (Hungarian) within ``--radius-px`` (6 px, HoVer-Net's
  criterion), and panoptic quality PQ = DQ x SQ with instances matched at IoU > 0.5;
- the DeepLIIF Ki-67 IHC tiles (512x512): detection P/R/F1 against the cell centroids of their masks.
  The README gives no mpp; nuclei there are 25-30 px across and the median mask is 550 px (34 um^2 at
  0.25, 137 um^2 at 0.5), so they are 40x and scored at mpp 0.25 with the same 6 px radius. Mask
  fragments under 48 px (3 um^2; 15 of 615, cut at tile edges) are not counted as cells. Recall is also
  given per class: Ki-67 positive (brown DAB) and negative (blue haematoxylin) cells.

Prints per-image medians and pooled counts, and throughput in megapixels/s on the patches and on one
2048x2048 window of the CMU-1-Small-Region demo slide (20x). Data are read from ``--data`` (default
``../shared/data`` beside the repository); without it the benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LabelFn = Callable[[np.ndarray, float], np.ndarray]

CONSEP_MPP = 0.25
KI67_MPP = 0.25
KI67_MIN_CELL_PX = 48
SLIDE_WINDOW_PX = 2048


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


def consep_images(data: Path, split: str, limit: int | None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb uint8 (256, 256, 3), true instance map) for each CoNSeP patch of ``split``."""
    npz = np.load(data / "consep_patches" / f"inst_maps_{split}.npz")
    for name, inst in list(zip(npz["names"], npz["inst"]))[:limit]:
        rgb = np.asarray(Image.open(data / "consep_patches" / "images" / f"{name}.jpg").convert("RGB"))
        yield str(name), rgb, inst


def ki67_images(data: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, rgb uint8 (512, 512, 3), true centroids (N, 2) x, y, bool (N,) Ki-67 positive) per DeepLIIF tile."""
    root = data / "deepliif_ki67_samples"
    with open(root / "cells_from_masks.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if float(r["area_px"]) >= KI67_MIN_CELL_PX]
    for path in sorted((root / "ihc").glob("*.png")):
        mine = [r for r in rows if r["image"] == path.stem]
        cells = np.array([(float(r["cx"]), float(r["cy"])) for r in mine]).reshape(-1, 2)
        positive = np.array([r["ki67"] == "positive" for r in mine], bool)
        yield path.stem, np.asarray(Image.open(path).convert("RGB")), cells, positive


def timed(label_fn: LabelFn, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    labels = label_fn(rgb, mpp)
    return labels, time.perf_counter() - start


def score_consep(label_fn: LabelFn, data: Path, split: str, limit: int | None, radius_px: float):
    scores, seconds, pixels = [], 0.0, 0
    for _, rgb, inst in consep_images(data, split, limit):
        labels, dt = timed(label_fn, rgb, CONSEP_MPP)
        seconds, pixels = seconds + dt, pixels + rgb.shape[0] * rgb.shape[1]
        tp = match_centroids(label_centroids(inst), label_centroids(labels), radius_px)
        n_true, n_pred = len(np.unique(inst)) - 1, int(len(np.unique(labels)) - 1)
        scores.append(ImageScore(tp, n_pred - tp, n_true - tp, *panoptic_terms(inst, labels)))
    return scores, pixels / 1e6 / max(seconds, 1e-9)


def score_ki67(label_fn: LabelFn, data: Path, radius_px: float) -> tuple[list[ImageScore], dict[str, tuple[int, int]]]:
    """Per-tile scores, and (found, total) true cells per Ki-67 class, a cell found when matched in the pairing."""
    scores, by_class = [], {"positive": [0, 0], "negative": [0, 0]}
    for _, rgb, true_xy, positive in ki67_images(data):
        pred_xy = label_centroids(label_fn(rgb, KI67_MPP))
        found = matched_true(true_xy, pred_xy, radius_px)
        scores.append(ImageScore(int(found.sum()), len(pred_xy) - int(found.sum()), int((~found).sum())))
        for name, members in (("positive", positive), ("negative", ~positive)):
            by_class[name][0] += int(found[members].sum())
            by_class[name][1] += int(members.sum())
    return scores, {k: (v[0], v[1]) for k, v in by_class.items()}


def slide_throughput(label_fn: LabelFn, data: Path) -> tuple[float, int] | None:
    """(megapixels/s, nuclei) on one 2048x2048 window of the 20x demo slide; None without the slide."""
    path = data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.exists():
        return None
    from preprocess.slide import OpenSlideReader

    with OpenSlideReader(path) as reader:
        rgb, mpp = reader.read_region(0, 0, SLIDE_WINDOW_PX, SLIDE_WINDOW_PX), reader.require_mpp()
    labels, dt = timed(label_fn, rgb, mpp)
    return SLIDE_WINDOW_PX**2 / 1e6 / dt, int(labels.max())


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def _pq(s: ImageScore) -> tuple[float, float, float]:
    dq = s.pq_tp / max(s.pq_tp + 0.5 * s.pq_fp + 0.5 * s.pq_fn, 1e-12)
    sq = s.iou_sum / max(s.pq_tp, 1)
    return dq, sq, dq * sq


def _pooled(scores: list[ImageScore]) -> ImageScore:
    fields = ("tp", "fp", "fn", "pq_tp", "pq_fp", "pq_fn", "iou_sum")
    return ImageScore(*(sum(getattr(s, f) for s in scores) for f in fields))


def report(name: str, scores: list[ImageScore], with_pq: bool) -> None:
    """Print one block: median over images and pooled over all images of P, R, F1 (and DQ, SQ, PQ)."""
    pooled = _pooled(scores)
    header = f"{'':8s} {'P':>6s} {'R':>6s} {'F1':>6s}" + (f" {'DQ':>6s} {'SQ':>6s} {'PQ':>6s}" if with_pq else "")
    print(f"\n{name}: {len(scores)} images, {pooled.tp + pooled.fn} true nuclei, {pooled.tp + pooled.fp} found")
    print(header)
    for label, per_image in (("median", True), ("pooled", False)):
        if per_image:
            rows = [_prf(s.tp, s.fp, s.fn) + (_pq(s) if with_pq else ()) for s in scores]
            values = [statistics.median(col) for col in zip(*rows)]
        else:
            values = list(_prf(pooled.tp, pooled.fp, pooled.fn)) + (list(_pq(pooled)) if with_pq else [])
        print(f"{label:8s} " + " ".join(f"{v:6.3f}" for v in values))
    print(f"pooled counts: TP {pooled.tp}, FP {pooled.fp}, FN {pooled.fn}" + (
        f"; PQ matches {pooled.pq_tp}, unmatched pred {pooled.pq_fp}, unmatched true {pooled.pq_fn}" if with_pq else ""
    ))


def load_label_fn(spec: str) -> LabelFn:
    """The function named ``module:function``, e.g. ``preprocess.segment:label_nuclei``."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--limit", type=int, default=None, help="first N CoNSeP patches only")
    parser.add_argument("--radius-px", type=float, default=6.0, help="centroid match radius at 40x (px)")
    parser.add_argument("--segmenter", default="preprocess.segment:label_nuclei", help="module:function")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if not (args.data / "consep_patches").is_dir():
        print(f"skipped: no CoNSeP patches under {args.data} (pass --data DIR holding consep_patches/)")
        return 0
    label_fn = load_label_fn(args.segmenter)
    print(f"segmenter {args.segmenter}; centroid radius {args.radius_px:g} px at 40x")
    consep, consep_mps = score_consep(label_fn, args.data, args.split, args.limit, args.radius_px)
    report(f"CoNSeP {args.split} (mpp {CONSEP_MPP})", consep, with_pq=True)
    if (args.data / "deepliif_ki67_samples").is_dir():
        ki67, by_class = score_ki67(label_fn, args.data, args.radius_px)
        report(f"Ki-67 DeepLIIF (mpp {KI67_MPP})", ki67, with_pq=False)
        print("recall by class: " + ", ".join(f"{k} {f}/{n} = {f / max(n, 1):.3f}" for k, (f, n) in by_class.items()))
    print(f"\nspeed: {consep_mps:.2f} MP/s on 256x256 CoNSeP patches")
    slide = slide_throughput(label_fn, args.data)
    if slide:
        print(f"speed: {slide[0]:.2f} MP/s on a {SLIDE_WINDOW_PX}x{SLIDE_WINDOW_PX} window of CMU-1-Small-Region "
              f"({slide[1]} nuclei)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
