"""Right suggestions on the product's own cells, with and without spatial context: fast and low-noise.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_context_cells.py HALI_DATA_DIR [--seeds 10]

``HALI_DATA_DIR`` is a replay stack's data dir (``bench/bench_replay.py`` keeps it under its temporary
folder, ``hali-data``): the cell tables the product's segmenter and featurizer wrote for the 14 stitched
CoNSeP test images. Each cell's truth is the nearest ground-truth nucleus within 3 um, else "not a nucleus"
(as the replay's annotator answers). N random cells are labelled; the class-balanced logistic regression's
suggestions are scored on every other cell, as :class:`ml_backend.suggestions.context.CellFeatures` computes
them (the product's code): plain features, context, context + smoothing. Mean and standard error over seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.storage import LocalStorage
from bench.replay.scoring import map_class, match_boxes
from bench.replay.walk import source_of_slides
from ml_backend.model.context import box_centroids
from ml_backend.model.linear import LogisticClassifier
from ml_backend.simulation.dataset import parse_class_map
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.embeddings import EmbeddingIndex
from preprocess.datasets.consep import MPP, load_consep_split

MAPS = {"4class": None, "tils": "inflammatory=TIL,*=other"}
VARIANTS = {"plain": None, "context": ContextSpec(smooth_alpha=1.0), "context+smooth 0.3": ContextSpec(smooth_alpha=0.3),
            "context+smooth 0.5": ContextSpec(), "context+smooth 0.7": ContextSpec(smooth_alpha=0.7)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--consep", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/consep_patches")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--labels", default="50,100,200,400,800")
    args = p.parse_args()
    sources = source_of_slides(args.data_dir)
    gt = load_consep_split(args.consep, "test")
    storage = LocalStorage(args.data_dir)
    index = EmbeddingIndex(storage)
    slides = sorted(sources)
    for name, spec in MAPS.items():
        class_map = parse_class_map(spec)
        truth = np.concatenate([_truth(index.table(s).boxes, gt[sources[s]][1], class_map) for s in slides])
        classes, y = np.unique(truth, return_inverse=True)
        per_variant = {v: _features(index, storage, s_, slides) for v, s_ in VARIANTS.items()}
        for n in (int(v) for v in args.labels.split(",")):
            scores = {v: [] for v in VARIANTS}
            for seed in range(args.seeds):
                idx = np.random.default_rng(seed).choice(len(y), n, replace=False)
                rest = np.setdiff1d(np.arange(len(y)), idx)
                for v, (feats, proba) in per_variant.items():
                    head = LogisticClassifier(len(classes)).fit(feats[idx], y[idx])
                    scores[v].append(np.mean(proba(head)[rest].argmax(1) == y[rest]))
            se = np.sqrt(args.seeds)
            print(f"{name:6s} {n:4d} labels: " + ", ".join(f"{v} {np.mean(s):.3f} +- {np.std(s) / se:.3f}"
                                                          for v, s in scores.items()), flush=True)
    return 0


def _truth(boxes: np.ndarray, nuclei, class_map) -> np.ndarray:
    idx = match_boxes(box_centroids(boxes), nuclei.xy, 3.0 / MPP)
    return np.array([map_class(str(nuclei.label[i]), class_map) if i >= 0 else "not a nucleus" for i in idx])


def _features(index: EmbeddingIndex, storage: LocalStorage, spec: ContextSpec | None, slides: list[str]):
    """(every cell's features (N, D), head -> shown probabilities (N, K)) through the product's CellFeatures."""
    cf = CellFeatures(index, storage, spec)
    rows = {s: np.arange(len(index.table(s))) for s in slides}
    feats = np.concatenate([cf.features(s, rows[s]) for s in slides])
    return feats, lambda head: np.concatenate([cf.proba(head, s, rows[s], suggest=True) for s in slides])


if __name__ == "__main__":
    sys.exit(main())
