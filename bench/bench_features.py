"""Which cell features should a fresh install use? A probe on CoNSeP's labeled nuclei.

    .venv/bin/python bench/bench_features.py [--checkpoint .state/pretrain/resnet18-consep.pt] \
        [--ns 50,200,1000] [--seeds 5] [--pool 4000] [--test-limit N] [--cache .state/bench-features]

Cuts every nucleus's patch as preprocessing does (20 um around the centroid at mpp 0.25, resized to 40 px),
embeds the CoNSeP test cells and a pool of train cells with each featurizer -- the random-init ResNet-18,
the pretrained one when ``--checkpoint`` is given, and the handcrafted measurements -- then, per seed,
draws N labeled train cells at random and trains two probes on the same cells for every featurizer: the
HALI head (:class:`ml_backend.model.head.HeadClassifier`, default preset) and a standardised logistic regression.
Prints accuracy and balanced accuracy on all test cells (4 classes: epithelial, inflammatory, other,
spindle) as mean +- std over seeds, and each featurizer's speed in cells/s. With ``--cache`` the features
are kept in .npz files there and reused by the next run. Without the data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml_backend.model.head import HeadClassifier  # noqa: E402
from preprocess.features.featurize import ResNet18Featurizer, cell_patch_px  # noqa: E402
from preprocess.features.handcrafted import HandcraftedFeaturizer  # noqa: E402
from preprocess.features.pretrain import load_centroid_table  # noqa: E402

MPP, PATCH_UM = 0.25, 20.0


def main() -> int:
    args = _args()
    torch.set_num_threads(args.threads)
    table = args.data / "consep_patches" / "nuclei.csv"
    if not table.exists():
        print(f"no CoNSeP table at {table}; pass --data. Nothing measured.")
        return 0
    patch_px = cell_patch_px(MPP, PATCH_UM)
    train = load_centroid_table(table, "train", patch_px=patch_px).subset(args.pool, seed=0)
    test = load_centroid_table(table, "test", classes=train.classes, patch_px=patch_px).subset(args.test_limit, seed=1)
    print(f"CoNSeP: pool of {len(train)} train cells, {len(test)} test cells, classes {list(train.classes)}; "
          f"patches {PATCH_UM:g} um at mpp {MPP} -> {patch_px} px -> 40 px")
    featurizers = {"resnet18 random-init": ResNet18Featurizer(), "handcrafted": HandcraftedFeaturizer(PATCH_UM)}
    if args.checkpoint:
        featurizers[f"resnet18 pretrained ({args.checkpoint.name})"] = ResNet18Featurizer(args.checkpoint)
    features = {name: _cached(args.cache, name, len(train), len(test), lambda f=f, name=name: _embed(
        f, name, train.patches, test.patches)) for name, f in featurizers.items()}
    ns = [int(n) for n in args.ns.split(",")]
    print("\n| features | N | head acc | head bal. acc | logreg acc | logreg bal. acc |\n|---|---|---|---|---|---|")
    for name, (x_pool, x_test) in features.items():
        for n in ns:
            scores = [_probe(x_pool, train.labels, x_test, test.labels, n, seed, len(train.classes))
                      for seed in range(args.seeds)]
            cells = [_cell([s[k] for s in scores]) for k in range(4)]
            print(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return 0


def _cached(cache: Path | None, name: str, n_pool: int, n_test: int, compute):
    if cache is None:
        return compute()
    path = cache / f"{name.replace(' ', '_').replace('/', '_')}-{n_pool}-{n_test}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["pool"], f["test"]
    x_pool, x_test = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, pool=x_pool, test=x_test)
    return x_pool, x_test


def _embed(featurizer, name: str, pool: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t0 = time.perf_counter()
    x_pool, x_test = featurizer.embed(pool), featurizer.embed(test)
    seconds = time.perf_counter() - t0
    print(f"{name}: dim {x_pool.shape[1]}, {(len(pool) + len(test)) / seconds:.0f} cells/s")
    return x_pool, x_test


def _probe(x_pool, y_pool, x_test, y_test, n: int, seed: int, n_classes: int) -> tuple[float, ...]:
    """Accuracy and balanced accuracy of the head and of logistic regression trained on n random cells."""
    pick = np.random.default_rng(seed).choice(len(y_pool), n, replace=False)
    head = HeadClassifier(n_classes=n_classes, random_state=seed).fit(x_pool[pick], y_pool[pick])
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    logreg.fit(x_pool[pick], y_pool[pick])
    out = []
    for model in (head, logreg):
        pred = model.predict(x_test)
        out += [float(np.mean(pred == y_test)), float(balanced_accuracy_score(y_test, pred))]
    return tuple(out)


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--checkpoint", type=Path, help="a `hali pretrain` checkpoint (its sidecar beside it)")
    p.add_argument("--ns", default="50,200,1000", help="labeled train cells per probe, comma-separated")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--pool", type=int, default=4000, help="train cells embedded (the labels are drawn from them)")
    p.add_argument("--test-limit", type=int, help="test cells scored (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, help="folder for the features (.npz), reused by later runs")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
