"""Share of right suggestions of a class-balanced logistic regression, as fitted and as suggested.

    .venv/bin/python bench/bench_suggestions.py [--data ../shared/data/consep_patches] [--seeds 10]

CoNSeP, handcrafted features (cached in ``.state/sim/cache`` as ``hali simulate`` caches them), N random
labels from the pool split, scored on the test split: ``predict_proba`` (balanced posteriors) against
``suggest_proba`` (re-weighted by the labelled class frequencies: what Label Studio shows). Mean and
standard error over seeds. Without the data it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.model.linear import LogisticClassifier  # noqa: E402
from ml_backend.simulation.dataset import load_cell_table, parse_class_map, split_pool_test  # noqa: E402
from ml_backend.simulation.embedding import embed_cells, make_featurizer  # noqa: E402

MAPS = {"tils": "inflammatory=TIL,*=other", "4class": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/consep_patches")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--labels", default="50,100,200,400,800")
    args = parser.parse_args()
    if not (args.data / "nuclei.csv").is_file():
        print(f"no CoNSeP data at {args.data}; nothing to measure")
        return 0
    for name, class_map in MAPS.items():
        data = load_cell_table(args.data / "nuclei.csv", class_map=parse_class_map(class_map))
        features = embed_cells(data, args.data / "images", make_featurizer("handcrafted"), patch_px=80,
                               cache_dir=REPO / ".state/sim/cache")
        pool, test = split_pool_test(data)
        k = len(data.class_names)
        for n in (int(v) for v in args.labels.split(",")):
            fitted, suggested = [], []
            for seed in range(args.seeds):
                idx = np.random.default_rng(seed).choice(pool, n, replace=False)
                model = LogisticClassifier(k).fit(features[idx], data.y[idx])
                fitted.append(np.mean(model.predict_proba(features[test]).argmax(1) == data.y[test]))
                suggested.append(np.mean(model.suggest_proba(features[test]).argmax(1) == data.y[test]))
            se = np.sqrt(args.seeds)
            print(f"{name:7s} {n:4d} labels: balanced {np.mean(fitted):.3f} +- {np.std(fitted) / se:.3f}, "
                  f"suggested {np.mean(suggested):.3f} +- {np.std(suggested) / se:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
