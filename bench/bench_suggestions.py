"""Share of right suggestions of a class-balanced logistic regression: as fitted, as suggested, and with
spatial context (the product's ``HALI_CONTEXT`` / ``HALI_SMOOTH_ALPHA``).

    .venv/bin/python bench/bench_suggestions.py [--data ../shared/data/consep_patches] [--seeds 10]

CoNSeP, handcrafted features (cached in ``.state/sim/cache`` as ``hali simulate`` caches them), N random
labels from the pool split, scored on the test split. Variants (columns):

- ``balanced``: ``predict_proba`` (balanced posteriors);
- ``suggested``: ``suggest_proba`` (re-weighted by the labelled class frequencies: what Label Studio shows);
- ``+context``: the features plus the mean features of the 8 nearest cells and the local density (25 um);
- ``+smooth a``: each cell's suggested probabilities mixed with its 8 spatial neighbours' (a own, 1 - a theirs);
- ``+context+smooth a``: both (``HALI_CONTEXT=true``, ``HALI_SMOOTH_ALPHA=a``).

Neighbours are cells of the same CoNSeP crop (the crops overlap). Mean and standard error over seeds.
Without the data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.model.context import context_features, local_density, smooth_proba, spatial_neighbours  # noqa: E402
from ml_backend.model.linear import LogisticClassifier  # noqa: E402
from ml_backend.simulation.dataset import load_cell_table, parse_class_map, split_pool_test  # noqa: E402
from ml_backend.simulation.embedding import embed_cells, make_featurizer  # noqa: E402

MAPS = {"tils": "inflammatory=TIL,*=other", "4class": None}
MPP = 0.25  # CoNSeP: 40x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/consep_patches")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--labels", default="50,100,200,400,800")
    parser.add_argument("--alphas", default="0.5", help="smoothing weights of a cell's own probabilities")
    args = parser.parse_args()
    if not (args.data / "nuclei.csv").is_file():
        print(f"no CoNSeP data at {args.data}; nothing to measure")
        return 0
    alphas = [float(a) for a in args.alphas.split(",")]
    for name, class_map in MAPS.items():
        data = load_cell_table(args.data / "nuclei.csv", class_map=parse_class_map(class_map))
        plain = embed_cells(data, args.data / "images", make_featurizer("handcrafted"), patch_px=80,
                            cache_dir=REPO / ".state/sim/cache")
        nbrs = spatial_neighbours(data.xy, data.image)
        context = context_features(plain, nbrs, local_density(data.xy, MPP, data.image))
        pool, test = split_pool_test(data)
        for n in (int(v) for v in args.labels.split(",")):
            scores: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                idx = np.random.default_rng(seed).choice(pool, n, replace=False)
                for label, value in _one_seed(data, plain, context, nbrs, idx, test, alphas).items():
                    scores.setdefault(label, []).append(value)
            cols = ", ".join(f"{k} {np.mean(v):.3f} +- {np.std(v) / np.sqrt(args.seeds):.3f}" for k, v in scores.items())
            print(f"{name:7s} {n:4d} labels: {cols}", flush=True)
    return 0


def _one_seed(data, plain, context, nbrs, idx, test, alphas) -> dict[str, float]:
    """Share of right test suggestions per variant; smoothing uses every cell's probabilities (test cells'
    neighbours are test cells: a crop is on one side of the split)."""
    k = len(data.class_names)
    out = {}
    base = LogisticClassifier(k).fit(plain[idx], data.y[idx])
    ctx = LogisticClassifier(k).fit(context[idx], data.y[idx])
    out["balanced"] = _right(base.predict_proba(plain), data.y, test)
    shown, shown_ctx = base.suggest_proba(plain), ctx.suggest_proba(context)
    out["suggested"] = _right(shown, data.y, test)
    out["+context"] = _right(shown_ctx, data.y, test)
    for a in alphas:
        out[f"+smooth {a}"] = _right(smooth_proba(shown, nbrs, a), data.y, test)
        out[f"+context+smooth {a}"] = _right(smooth_proba(shown_ctx, nbrs, a), data.y, test)
    return out


def _right(proba: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    return float(np.mean(proba[rows].argmax(1) == y[rows]))


if __name__ == "__main__":
    sys.exit(main())
