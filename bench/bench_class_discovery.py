"""Does a strategy miss a whole class? Synthetic replays where the control's walk meets one class at a time.

Three Gaussian clusters (equal, or one rare cluster of 12 cells), walked class after class in 5-cell
tasks, 30 labels, retrain every 10; 5 seeds per layout. Prints, per strategy, how many of the 15 replays
never labelled some class, and the mean label index at which each replay first met its last class::

    PYTHONPATH=$PWD nice .venv/bin/python bench/bench_class_discovery.py [--strategies coreset,hybrid,...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ml_backend.simulation.efficiency import ReplayConfig, replay_annotator
from ml_backend.simulation.tasks import group_tasks

LAYOUTS = ([60, 60, 60], [80, 80, 12], [80, 12, 80])


def blobs(sizes: list[int], d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(len(sizes), d))
    y = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32), y


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategies", default="coreset,hybrid,relevance,entropy,random")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    print("strategy | replays missing a class | mean label index of the last class met (missing: 30)")
    for strategy in args.strategies.split(","):
        missed, last = 0, []
        for sizes in LAYOUTS:
            for seed in range(args.seeds):
                x, y = blobs(sizes, seed=seed)
                walk = np.argsort(y, kind="stable")
                config = ReplayConfig(strategy, max_labels=30, retrain_every=10, max_epochs=20)
                replay = replay_annotator(x[walk], y[walk], group_tasks(np.zeros(len(y), int), 5), 3, config)
                labels = y[walk][replay.order]
                first = [int(np.flatnonzero(labels == c)[0]) if (labels == c).any() else 30 for c in range(3)]
                missed += max(first) == 30
                last.append(max(first))
        print(f"{strategy} | {missed}/{len(last)} | {np.mean(last):.1f}", flush=True)


if __name__ == "__main__":
    main()
