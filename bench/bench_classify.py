"""Whole-slide classification speed: a million cells of cached features through the project's model.

    .venv/bin/python bench/bench_classify.py [--cells 1000000] [--dim 40] [--repeats 3]

Times the pure part of ``hali classify`` on synthetic features (the handcrafted featurizer's size): the
suggestion probabilities of every cell (logistic regression, 5 targets), the per-cell CSV, and the counts.
Reading the cell table and the slide's thumbnail come on top. Target (issue): 1M cells < 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchutil import median_seconds  # noqa: E402
from ml_backend.classify.cells import cells_csv, classify_cells, summary_rows  # noqa: E402
from ml_backend.model.linear import LogisticClassifier  # noqa: E402
from preprocess.tiles.cells import CellTable  # noqa: E402

TARGETS = ("Tumor", "Lymphocyte", "Stroma", "Other", "Not a nucleus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(args.cells, args.dim)).astype(np.float32)
    table = CellTable(np.char.add("c", np.arange(args.cells).astype(str)), rng.integers(0, 50_000, (args.cells, 4)),
                      np.full(args.cells, "t"), features)
    model = LogisticClassifier(len(TARGETS)).fit(features[:1000], rng.integers(0, len(TARGETS), 1000))
    steps = {"classify": lambda: classify_cells(table, "s", model, TARGETS, "v", 0.25, 100.0)}
    result = steps["classify"]()
    steps.update({"csv": lambda: cells_csv(result), "summary": lambda: summary_rows(result)})
    print(f"{args.cells:,} cells x {args.dim} features, {len(TARGETS)} targets; median of {args.repeats} runs")
    for name, step in steps.items():
        median, times, _ = median_seconds(step, args.repeats, warmup=0)
        print(f"  {name:9s} {median:6.2f} s  (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
