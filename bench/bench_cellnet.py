"""Featurizers on the cells an annotator is shown: few-shot accuracy of the product's learner on CoNSeP test.

The cells are the boxes the product's default segmenter finds in CoNSeP's **test** images, each labelled as
the replay labels it (the class of the ground-truth nucleus within 3 um, else "not a nucleus"). For each
featurizer the patches are cut and embedded as ``hali preprocess`` cuts and embeds them; then, for each seed,
N boxes are drawn at random, the product's learner (``logreg``, class-balanced, standardised) is fitted on
them, and every other box is scored: the share of suggestions an annotator would keep (``suggest_proba``, as
the backend suggests) and the balanced accuracy of its class-balanced decision (``predict``). Mean +- standard error over the seeds.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_cellnet.py --seeds 10

``--classes-map tils`` scores TIL-vs-rest ("not a nucleus" stays its own class). cellnet's packaged weights
were trained on CoNSeP's train images, so these test images are in domain for them. ``--ki67`` instead scores
Ki-67 positive vs negative on the DeepLIIF IHC tiles (ground-truth cell centres: 615 cells, so N is small),
a stain the packaged weights never saw.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_segmentation import KI67_MPP, ki67_images
from ml_backend.model.learners import make_learner
from preprocess.datasets.consep import MPP, load_consep_split
from preprocess.features.cellnet_train import CLASSES, label_detections
from preprocess.features.featurize import cell_patch_px, make_featurizer, patch_um_of
from preprocess.features.pretrain import patches_from_image
from preprocess.nuclei.learned import segment_nuclei_learned

DATA = Path(__file__).resolve().parents[2] / "shared/data/consep_patches"
NOT_NUCLEUS = CLASSES.index("not a nucleus")


def boxes(data: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per test image: its RGB, the segmenter's box centres (N, 2) and their labels (index into CLASSES)."""
    out = []
    for image, nuclei, _ in load_consep_split(data, "test").values():
        det = segment_nuclei_learned(image, MPP)
        out.append((image, det.centroids_xy, label_detections(det.centroids_xy, nuclei.xy, nuclei.label, 3.0 / MPP)))
    return out


def ki67_cells(data: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per DeepLIIF tile: its RGB, the true cell centres (N, 2) and 0 = Ki-67 positive, 1 = negative."""
    return [(rgb, xy, np.where(positive, 0, 1)) for _, rgb, xy, positive in ki67_images(data)]


def features(name: str, cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]], patch_um: float,
             mpp: float = MPP) -> np.ndarray:
    name, _, checkpoint = name.partition("=")  # "cellnet=PATH": other cellnet weights
    featurizer = make_featurizer(name, checkpoint or None, patch_um=patch_um)
    patch_px = cell_patch_px(mpp, patch_um_of(featurizer, patch_um))
    return np.concatenate([featurizer.embed(patches_from_image(image, xy, patch_px, featurizer.patch_out_px))
                           for image, xy, _ in cells]).astype(np.float32)


def map_labels(labels: np.ndarray, classes_map: str) -> np.ndarray:
    if classes_map == "4class":
        return labels
    til = CLASSES.index("inflammatory")
    return np.where(labels == NOT_NUCLEUS, 2, np.where(labels == til, 0, 1))  # TIL, other, not a nucleus


def few_shot(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    train = rng.choice(len(y), n, replace=False)
    test = np.setdiff1d(np.arange(len(y)), train)
    model = make_learner("logreg", int(y.max()) + 1, random_state=seed).fit(x[train], y[train])
    shown = model.suggest_proba(x[test]).argmax(axis=1)  # the suggestion an annotator sees
    pred = model.predict(x[test])  # the class-balanced decision
    recalls = [float((pred[y[test] == k] == k).mean()) for k in np.unique(y[test])]
    return float((shown == y[test]).mean()), float(np.mean(recalls))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--featurizers", default="handcrafted,cellnet",
                   help="comma separated; cellnet=PATH scores other cellnet weights (python -m preprocess.features.cellnet_train)")
    p.add_argument("--classes-map", choices=("4class", "tils"), default="4class")
    p.add_argument("--labels", default="100,300,800", help="N labelled boxes, comma separated")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--ki67", action="store_true", help="Ki-67 positive vs negative on the DeepLIIF IHC tiles")
    p.add_argument("--patch-um", type=float, default=20.0, help="the handcrafted featurizer's patch (the default)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.ki67:
        if not (args.data.parent / "deepliif_ki67_samples").is_dir():
            print(f"skipped: no DeepLIIF Ki-67 data beside {args.data} (see ../shared/data/README.md)")
            return 0
        cells, mpp = ki67_cells(args.data.parent), KI67_MPP
        y = np.concatenate([labels for *_, labels in cells])
        print(f"{len(y)} Ki-67 cells from {len(cells)} IHC tiles; {(y == 0).mean():.1%} positive")
    else:
        if not (args.data / "nuclei.csv").exists():
            print(f"skipped: no CoNSeP data at {args.data} (see ../shared/data/README.md)")
            return 0
        t0, mpp = time.perf_counter(), MPP
        cells = boxes(args.data)
        y = map_labels(np.concatenate([labels for *_, labels in cells]), args.classes_map)
        print(f"{len(y)} boxes from {len(cells)} test images ({time.perf_counter() - t0:.0f} s to segment); "
              f"{(y == (NOT_NUCLEUS if args.classes_map == '4class' else 2)).mean():.1%} not a nucleus")
    ns = [int(v) for v in args.labels.split(",")]
    print("\n| featurizer | dim | embed s | " + " | ".join(f"N={n} kept | N={n} bal. acc" for n in ns) + " |")
    print("|---|---:|---:|" + "---:|---:|" * len(ns))
    for name in args.featurizers.split(","):
        t0 = time.perf_counter()
        x = features(name, cells, args.patch_um, mpp)
        embed_s = time.perf_counter() - t0
        row = [name, str(x.shape[1]), f"{embed_s:.0f}"]
        for n in ns:
            runs = np.array([few_shot(x, y, n, seed) for seed in range(args.seeds)])
            mean, se = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(len(runs))
            row += [f"{mean[0]:.3f} +- {se[0]:.3f}", f"{mean[1]:.3f} +- {se[1]:.3f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
