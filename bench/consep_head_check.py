"""Does capping an epoch at MAX_STEPS_PER_EPOCH steps cost accuracy? The head on CoNSeP, with and without.

    .venv/bin/python bench/consep_head_check.py [--featurizer handcrafted] [--ns 2000,5000,10000,18216]
        [--seeds 3] [--cache-dir .state/sim/cache]

Not run by ``make bench`` (it needs ../shared/data and, the first time, embeds 28,546 CoNSeP nuclei:
minutes). Uses ``hali simulate``'s cell table, pool/test split and feature cache (so a ``hali simulate``
run with the same featurizer fills the cache). Per seed, N pool cells drawn at random train the head
(default preset) twice: as shipped (at most 16 steps per epoch: the batch grows above 1,024 training
rows) and with the cap lifted (batches of 64 throughout, the behaviour before). Prints the test
balanced accuracy, accuracy, epochs and fit seconds, mean over seeds, on the 4 CoNSeP classes.
Below about 1,365 labels the two are identical by construction (tests/unit/test_head_training.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchutil  # noqa: E402
from ml_backend.model import training as head_training  # noqa: E402
from ml_backend.model.head import HeadClassifier  # noqa: E402
from ml_backend.simulation.dataset import load_cell_table, split_pool_test  # noqa: E402
from ml_backend.simulation.embedding import embed_cells, make_featurizer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "consep_patches"


def main() -> int:
    args = _parse_args()
    torch.set_num_threads(1)
    if not (DATA / "nuclei.csv").exists():
        print(f"no CoNSeP table at {DATA / 'nuclei.csv'}; nothing measured")
        return 0
    print(benchutil.header("Head on CoNSeP: capped epochs vs batches of 64", " ".join(
        ["bench/consep_head_check.py", *sys.argv[1:]])))
    data = load_cell_table(DATA / "nuclei.csv")
    features = embed_cells(data, DATA / "images", make_featurizer(args.featurizer), 80, cache_dir=args.cache_dir)
    pool, test = split_pool_test(data)
    print(f"{args.featurizer} features ({features.shape[1]}-d); pool {len(pool):,}, test {len(test):,}; "
          f"classes {list(data.class_names)}; mean over {args.seeds} seeds\n")
    print("| labels | bal. acc capped | bal. acc batches of 64 | acc capped | acc 64 | epochs capped | epochs 64 "
          "| fit s capped | fit s 64 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in [int(v) for v in args.ns.split(",")]:
        capped = [_fit_score(features, data.y, pool, test, n, seed, cap=True) for seed in range(args.seeds)]
        plain = [_fit_score(features, data.y, pool, test, n, seed, cap=False) for seed in range(args.seeds)]
        cells = [f"{statistics.mean(r[i] for r in runs):{fmt}}" for i, fmt in enumerate((".3f", ".3f", ".1f", ".2f"))
                 for runs in (capped, plain)]
        print(f"| {min(n, len(pool)):,} | " + " | ".join(cells) + " |", flush=True)
    print(benchutil.footer())
    return 0


def _fit_score(x: np.ndarray, y: np.ndarray, pool: np.ndarray, test: np.ndarray, n: int, seed: int,
               cap: bool) -> tuple[float, float, float, float]:
    """(balanced accuracy, accuracy, epochs, fit seconds) of a head trained on ``n`` random pool cells."""
    rows = np.random.default_rng(seed).permutation(pool)[:n]
    saved = head_training.MAX_STEPS_PER_EPOCH
    head_training.MAX_STEPS_PER_EPOCH = saved if cap else 10**9
    try:
        start = time.perf_counter()
        head = HeadClassifier(len(np.unique(y)), random_state=seed).fit(x[rows], y[rows])
        seconds = time.perf_counter() - start
    finally:
        head_training.MAX_STEPS_PER_EPOCH = saved
    pred = head.predict(x[test])
    return balanced_accuracy_score(y[test], pred), float((pred == y[test]).mean()), head.n_epochs_, seconds


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--featurizer", default="handcrafted", help="a hali simulate featurizer name")
    parser.add_argument("--ns", default="2000,5000,10000,18216", help="label counts")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".state" / "sim" / "cache")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
