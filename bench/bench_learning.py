"""Timing of the learning core: HeadClassifier.fit and select_coreset.

    python bench/bench_learning.py [--repeats 5] [--torch-threads 1]

Prints medians over ``--repeats`` runs, after one warm-up run that pays the one-time imports
(torch.optim loads torch._dynamo on first use: about 2 s per process).
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import torch

from ml_backend.model.head import HeadClassifier
from ml_backend.ordering.coreset import select_coreset

N_FEATURES = 512
N_CLASSES = 4


def labelled_embeddings(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, 512) float32, y (n,) int): overlapping gaussian classes, like real cell embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLASSES, N_FEATURES)) * 3.0 / np.sqrt(N_FEATURES)
    y = rng.integers(N_CLASSES, size=n)
    return (centres[y] + rng.normal(size=(n, N_FEATURES))).astype(np.float32), y


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``run`` and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_head(repeats: int) -> None:
    HeadClassifier(N_CLASSES, max_epochs=2).fit(*labelled_embeddings(100, seed=0))  # warm-up
    print(f"HeadClassifier.fit, {N_FEATURES}-d features, {N_CLASSES} classes, defaults (adam, batch 64)")
    print(f"{'labels':>8} {'median s':>9} {'epochs':>7} {'ms/epoch':>9}")
    for n in (100, 500, 1000, 5000):
        X, y = labelled_embeddings(n, seed=n)
        seconds, head = median_seconds(lambda: HeadClassifier(N_CLASSES).fit(X, y), repeats)
        print(f"{n:>8} {seconds:>9.3f} {head.n_epochs_:>7} {1e3 * seconds / head.n_epochs_:>9.2f}")


def bench_coreset(repeats: int) -> None:
    print("select_coreset, 32-d features, 100 labelled, budget 100")
    print(f"{'points':>10} {'median s':>9} {'peak MiB':>9} {'input MiB':>10}")
    for n in (10_000, 100_000, 1_000_000):
        features = np.random.default_rng(n).normal(size=(n, 32)).astype(np.float32)
        labeled = np.zeros(n, dtype=bool)
        labeled[:100] = True
        seconds, _ = median_seconds(lambda: select_coreset(features, labeled, 100), repeats)
        tracemalloc.start()
        select_coreset(features, labeled, 100)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{n:>10} {seconds:>9.3f} {peak / 2**20:>9.1f} {features.nbytes / 2**20:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_head(args.repeats)
    bench_coreset(args.repeats)


if __name__ == "__main__":
    main()
