"""Accuracy and speed of the nucleus segmenter on real annotated images.

    .venv/bin/python bench/bench_segmentation.py [--split test] [--limit N] [--segmenter module:function]
    .venv/bin/python bench/bench_segmentation.py --segmenter-weights CKPT [--device cuda] [--no-slide]
    .venv/bin/python bench/bench_segmentation.py --postprocess '{"core": 0.2, "min_area_um2": 1.5, "marker_h": 0.1}'

Scores a label function ``f(rgb uint8 (rows, cols, 3), mpp) -> int (rows, cols) instance map``
(default :func:`preprocess.nuclei.learned.label_nuclei_learned`, the product's H&E default; with
``--postprocess`` the packaged U-Net with some of its post-processing thresholds replaced, a JSON object of
:class:`preprocess.nuclei.learned.Postprocess` fields; with ``--segmenter-weights`` the HoVer-Net segmenter
that ``hali preprocess --segmenter-weights`` uses, e.g. one
written by ``hali train-segmenter``) on

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
import dataclasses
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess.nuclei.metrics import (  # noqa: E402 (after the path insert)
    ImageScore,
    label_centroids,
    matched_true,
    panoptic_quality,
    pooled,
    precision_recall_f1,
    score_instances,
)

LabelFn = Callable[[np.ndarray, float], np.ndarray]

CONSEP_MPP = 0.25
KI67_MPP = 0.25
KI67_MIN_CELL_PX = 48
SLIDE_WINDOW_PX = 2048


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
        scores.append(score_instances(inst, labels, radius_px))
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
    from adapters.slide_reader import OpenSlideReader

    with OpenSlideReader(path) as reader:
        rgb, mpp = reader.read_region(0, 0, SLIDE_WINDOW_PX, SLIDE_WINDOW_PX), reader.require_mpp()
    labels, dt = timed(label_fn, rgb, mpp)
    return SLIDE_WINDOW_PX**2 / 1e6 / dt, int(labels.max())


def report(name: str, scores: list[ImageScore], with_pq: bool) -> None:
    """Print one block: median over images and pooled over all images of P, R, F1 (and DQ, SQ, PQ)."""
    total = pooled(scores)
    header = f"{'':8s} {'P':>6s} {'R':>6s} {'F1':>6s}" + (f" {'DQ':>6s} {'SQ':>6s} {'PQ':>6s}" if with_pq else "")
    print(f"\n{name}: {len(scores)} images, {total.tp + total.fn} true nuclei, {total.tp + total.fp} found")
    print(header)
    for label, per_image in (("median", True), ("pooled", False)):
        if per_image:
            rows = [precision_recall_f1(s.tp, s.fp, s.fn) + (panoptic_quality(s) if with_pq else ()) for s in scores]
            values = [statistics.median(col) for col in zip(*rows)]
        else:
            values = list(precision_recall_f1(total.tp, total.fp, total.fn))
            values += list(panoptic_quality(total)) if with_pq else []
        print(f"{label:8s} " + " ".join(f"{v:6.3f}" for v in values))
    print(f"pooled counts: TP {total.tp}, FP {total.fp}, FN {total.fn}" + (
        f"; PQ matches {total.pq_tp}, unmatched pred {total.pq_fp}, unmatched true {total.pq_fn}" if with_pq else ""
    ))


def load_label_fn(spec: str) -> LabelFn:
    """The function named ``module:function``, e.g. ``preprocess.nuclei.segment:label_nuclei``."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def hovernet_label_fn(weights: Path, device: str, batch_size: int) -> LabelFn:
    """``label_nuclei`` of a :class:`HoVerNetSegmenter` on ``weights`` (any layout its loader reads)."""
    from preprocess.nuclei.hovernet import HoVerNetSegmenter

    return HoVerNetSegmenter(weights, device=device, batch_size=batch_size).label_nuclei


def learned_label_fn(overrides: str) -> LabelFn:
    """``label_nuclei`` of the packaged U-Net with the :class:`Postprocess` fields in JSON ``overrides`` replaced."""
    from preprocess.nuclei.learned import LearnedSegmenter

    segmenter = LearnedSegmenter()
    try:
        segmenter.post = dataclasses.replace(segmenter.post, **json.loads(overrides))
    except (ValueError, TypeError) as err:
        raise SystemExit(f"--postprocess {overrides!r}: {err}; give a JSON object of Postprocess fields, "
                         f"e.g. '{{\"core\": 0.2, \"marker_h\": 0.1}}'") from err
    return segmenter.label_nuclei


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--limit", type=int, default=None, help="first N CoNSeP patches only")
    parser.add_argument("--radius-px", type=float, default=6.0, help="centroid match radius at 40x (px)")
    parser.add_argument("--segmenter", default="preprocess.nuclei.learned:label_nuclei_learned",
                        help="module:function; the classical one: preprocess.nuclei.segment:label_nuclei")
    parser.add_argument("--segmenter-weights", type=Path,
                        help="score HoVer-Net with these weights (as hali preprocess --segmenter-weights)")
    parser.add_argument("--postprocess", help="JSON object of the packaged U-Net's Postprocess fields to replace")
    parser.add_argument("--device", default="auto", help="HoVer-Net device: auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="HoVer-Net patches per forward pass (1 on CPU)")
    parser.add_argument("--no-ki67", action="store_true", help="skip the Ki-67 tiles")
    parser.add_argument("--no-slide", action="store_true", help="skip the demo-slide throughput window")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if not (args.data / "consep_patches").is_dir():
        print(f"skipped: no CoNSeP patches under {args.data} (pass --data DIR holding consep_patches/)")
        return 0
    if args.segmenter_weights:
        label_fn = hovernet_label_fn(args.segmenter_weights, args.device, args.batch_size)
        name = f"HoVer-Net {args.segmenter_weights}"
    elif args.postprocess:
        label_fn, name = learned_label_fn(args.postprocess), f"learned U-Net, post-processing {args.postprocess}"
    else:
        label_fn, name = load_label_fn(args.segmenter), args.segmenter
    print(f"segmenter {name}; centroid radius {args.radius_px:g} px at 40x")
    consep, consep_mps = score_consep(label_fn, args.data, args.split, args.limit, args.radius_px)
    report(f"CoNSeP {args.split} (mpp {CONSEP_MPP})", consep, with_pq=True)
    if (args.data / "deepliif_ki67_samples").is_dir() and not args.no_ki67:
        ki67, by_class = score_ki67(label_fn, args.data, args.radius_px)
        report(f"Ki-67 DeepLIIF (mpp {KI67_MPP})", ki67, with_pq=False)
        print("recall by class: " + ", ".join(f"{k} {f}/{n} = {f / max(n, 1):.3f}" for k, (f, n) in by_class.items()))
    print(f"\nspeed: {consep_mps:.2f} MP/s on 256x256 CoNSeP patches ({1 / consep_mps:.2f} s per 1000x1000 px)")
    slide = None if args.no_slide else slide_throughput(label_fn, args.data)
    if slide:
        print(f"speed: {slide[0]:.2f} MP/s on a {SLIDE_WINDOW_PX}x{SLIDE_WINDOW_PX} window of CMU-1-Small-Region "
              f"({1 / slide[0]:.2f} s per 1000x1000 px at 20x; {slide[1]} nuclei)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
