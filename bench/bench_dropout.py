"""Does training the head with dropout (needed for MC-dropout passes) cost accuracy? CoNSeP, cached features.

Trains the head on N random pool labels (several seeds) with each dropout rate and prints the mean test
balanced accuracy and accuracy. Uses the `hali simulate` feature cache, so run a simulation first::

    nice .venv/bin/python bench/bench_dropout.py --cache-dir .state/sim/cache \
        [--classes-map 'inflammatory=TIL,*=other']
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from ml_backend.model.head import HeadClassifier
from ml_backend.simulation.dataset import CellColumns, load_cell_table, parse_class_map, split_pool_test
from ml_backend.simulation.embedding import embed_cells, make_featurizer

D = Path("../shared/data/consep_patches")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cache-dir", type=Path, required=True)
    p.add_argument("--classes-map", default=None)
    p.add_argument("--dropouts", default="0,0.1,0.25,0.5")
    p.add_argument("--labels", default="50,100,200,1000")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_cell_table(D / "nuclei.csv", CellColumns(), parse_class_map(args.classes_map))
    x = embed_cells(data, D / "images", make_featurizer("resnet18"), 80, 40, ".jpg", args.cache_dir)
    pool, test = split_pool_test(data, "test", random_state=0)
    k = len(data.class_names)
    print(f"classes {data.class_names}; pool {len(pool)}, test {len(test)}; {args.seeds} seeds")
    print("dropout | N | balanced accuracy | accuracy")
    for dropout in (float(v) for v in args.dropouts.split(",")):
        for n in (int(v) for v in args.labels.split(",")):
            bacc, acc = [], []
            for seed in range(args.seeds):
                idx = np.random.default_rng(seed).choice(pool, size=n, replace=False)
                head = HeadClassifier(k, dropout=dropout, random_state=seed).fit(x[idx], data.y[idx])
                pred = head.predict(x[test])
                bacc.append(balanced_accuracy_score(data.y[test], pred))
                acc.append(accuracy_score(data.y[test], pred))
            print(f"{dropout} | {n} | {np.mean(bacc):.3f} +- {np.std(bacc) / np.sqrt(len(bacc)):.3f} "
                  f"| {np.mean(acc):.3f}", flush=True)


if __name__ == "__main__":
    main()
