"""Cost of spatial context at project scale: the neighbour graph once per slide, then each retrain's share.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_context.py [--cells 1000000] [--dim 40]

One synthetic slide of ``--cells`` cells (nuclei ~8 um apart at 0.25 um/px, handcrafted-sized features) in a
local cell table. Prints: the first computation of the neighbour graph (KD-tree, k = 8, density within
25 um) and its cache object's size; a later process loading it; context features and smoothed suggestion
probabilities of every cell (what a retrain or ``hali classify`` computes), and of one 20-cell tile (what
``/predict`` computes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.storage import LocalStorage  # noqa: E402
from bench.benchutil import footer, header  # noqa: E402
from ml_backend.model.linear import LogisticClassifier  # noqa: E402
from ml_backend.suggestions.context import CellFeatures, ContextSpec, context_key  # noqa: E402
from ml_backend.suggestions.embeddings import EmbeddingIndex  # noqa: E402
from preprocess.layout import write_cell_table  # noqa: E402
from preprocess.tiles.cells import CellTable  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=40)
    args = p.parse_args()
    print(header("spatial context cost", " ".join(sys.argv)))
    rng = np.random.default_rng(0)
    side = int(np.sqrt(args.cells)) * 32  # ~32 px (8 um) between nuclei
    xy = rng.uniform(0, side, (args.cells, 2)).astype(np.int32)
    table = CellTable(np.char.add("c", np.arange(args.cells).astype(str)), np.concatenate([xy, np.full_like(xy, 12)], 1),
                      np.zeros(args.cells, dtype="<U1"), rng.normal(0, 1, (args.cells, args.dim)).astype(np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        storage = LocalStorage(tmp)
        write_cell_table(storage, "s", table)
        spec = ContextSpec()
        first = CellFeatures(EmbeddingIndex(storage), storage, spec)
        first.index.table("s")
        t = time.perf_counter()
        first.graph("s")
        built = time.perf_counter() - t
        size_mb = (Path(tmp) / context_key("s", spec)).stat().st_size / 2**20
        print(f"{args.cells:,} cells: neighbour graph computed and cached in {built:.2f} s ({size_mb:.0f} MiB)")
        later = CellFeatures(EmbeddingIndex(storage), storage, spec)
        later.index.table("s")
        t = time.perf_counter()
        later.graph("s")
        print(f"a later process loads it in {time.perf_counter() - t:.2f} s")
        labelled = rng.choice(args.cells, 500, replace=False)
        head = LogisticClassifier(5).fit(later.features("s", labelled), rng.integers(0, 5, 500))
        rows = np.arange(args.cells)
        t = time.perf_counter()
        later.features("s", rows)
        print(f"context features of every cell: {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        later.proba(head, "s", rows, suggest=True)
        print(f"smoothed suggestions of every cell (context features included): {time.perf_counter() - t:.2f} s")
        tile = rows[:20]
        t = time.perf_counter()
        for _ in range(100):
            later.proba(head, "s", tile, suggest=True)
        print(f"smoothed suggestions of one 20-cell tile (/predict): {(time.perf_counter() - t) * 10:.2f} ms")
    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
