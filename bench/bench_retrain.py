"""Retrain time versus the number of labels: the head fit, the rest of a retrain's compute, and a real one.

    .venv/bin/python bench/bench_retrain.py [--quick] [--pool 100000] [--labels 100,500,1000,2000,5000]
        [--dims 46,512] [--repeats 3] [--strategy coreset] [--no-ls] [--ls-cells 20000] [--ls-labels 1000]

1. **Compute** (in this process, no I/O). A synthetic slide of ``--pool`` cells in 200-cell tiles, with
   46-d (the handcrafted featurizer's size) or 512-d (ResNet-18) features of 4 skewed gaussian classes.
   The first N cells (whole tiles) are labelled; every tile without a label is an open task. Per N:

   - ``fit``: :class:`ml_backend.model.head.HeadClassifier` as the retrain job builds it (2x32 FC, 75/25
     stratified split, early stop after 10 epochs without a lower validation loss, minority
     oversampling, seed 0), for the ``adam`` and ``paper-sgd`` presets;
   - the rest of ``run_retrain``'s compute, through the same public calls: ``predict_proba`` and
     ``transform`` on every open and labelled cell, the query strategy's 100 picks, ``rank_tiles``, and
     one Label Studio prediction (``tile_prediction``) per open task, in rank order.

   Target (issue): fit + rest under 1 s for 5,000 labels. ``its CPU s`` is the CPU time of that total:
   on a shared machine, a wall time far above it means the run waited for a core.
2. **A real retrain** (skipped by ``--quick`` or ``--no-ls``): a real redis-server and Label Studio
   (``scripts/stack.py``; the integration tests' cached data dir when present, else a cold start of about
   a minute), a project of ``--ls-cells`` cells with ``--ls-labels`` of them labelled by imported
   annotations, then :func:`ml_backend.retrain.run.run_retrain` timed end to end, with the time spent inside
   Label Studio and Redis calls measured apart from the rest.

Torch runs one thread, as the retrain worker does (``HALI_TORCH_THREADS``, default 1).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import benchutil  # noqa: E402
from bench.synthetic import CLASSES, SyntheticSlide, make_slide  # noqa: E402
from label_config import rank_to_score  # noqa: E402
from ml_backend.model.head import HeadClassifier  # noqa: E402
from ml_backend.ordering.ranking import rank_tiles  # noqa: E402
from ml_backend.ordering.strategies import get_strategy  # noqa: E402
from ml_backend.retrain.job import frozen_gc  # noqa: E402
from ml_backend.suggestions.predictions import tile_prediction  # noqa: E402

PRESETS = ("adam", "paper-sgd")
QUERY_BUDGET = 100
TARGET_LABELS, TARGET_S = 5000, 1.0


def main() -> int:
    args = _parse_args()
    torch.set_num_threads(1)
    pool = args.pool or (20_000 if args.quick else 100_000)
    labels = _ints(args.labels or ("100,1000" if args.quick else "100,500,1000,2000,5000"))
    dims = _ints(args.dims or ("46" if args.quick else "46,512"))
    repeats = args.repeats or (1 if args.quick else 3)
    print(benchutil.header("Retrain time vs labels", " ".join(["bench/bench_retrain.py", *sys.argv[1:]])))
    _warm_up()
    print(f"\n## Compute: pool of {pool:,} cells in 200-cell tiles, 4 classes, strategy {args.strategy}, "
          f"{QUERY_BUDGET} picks; median of {repeats} run(s), seconds")
    print("| features | labels | fit adam (epochs) | fit paper-sgd (epochs) | predict | strategy | "
          "rank + predictions | total with adam | its CPU s | with paper-sgd |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with frozen_gc():  # as retrain_job does: the collector skips what was imported, not the job's own data
        for d in dims:
            slide = make_slide(pool, d, seed=d)
            for n in labels:
                print(_compute_row(slide, n, repeats, args.strategy), flush=True)
    print(f"target: fit + rest < {TARGET_S:g} s at {TARGET_LABELS:,} labels (adam preset)")
    if not (args.quick or args.no_ls):
        from bench.live_retrain import bench_live_retrain

        print(f"\n## A real run_retrain: Label Studio + redis-server, {args.ls_cells:,} cells, "
              f"{args.ls_labels:,} labels, 46-d features, median of {args.ls_repeats} run(s)")
        print(bench_live_retrain(args.ls_cells, args.ls_labels, args.ls_repeats))
    print(benchutil.footer())
    return 0


def _compute_row(slide: SyntheticSlide, n_labels: int, repeats: int, strategy_name: str) -> str:
    labelled_rows = np.arange(min(n_labels, len(slide.y)))
    open_tiles = np.unique(slide.tile_of_cell)[np.unique(slide.tile_of_cell[labelled_rows]).max() + 1 :]
    keep = np.zeros(len(slide.y), dtype=bool)
    keep[labelled_rows] = True
    keep |= np.isin(slide.tile_of_cell, open_tiles)
    features, task_ids = slide.features[keep], slide.tile_of_cell[keep]  # retrain concatenates a copy too
    labelled = np.zeros(len(features), dtype=bool)
    labelled[: len(labelled_rows)] = True
    x, y = features[labelled], slide.y[labelled_rows]
    fits = {p: _median(lambda p=p: HeadClassifier(len(CLASSES), optimizer=p, random_state=0).fit(x, y), repeats)
            for p in PRESETS}
    head = fits["adam"][2]
    strategy = get_strategy(strategy_name)
    predict = _median(lambda: (head.predict_proba(features), head.transform(features)), repeats)
    proba, emb = predict[2]
    picking = _median(lambda: strategy(emb, proba, labelled, QUERY_BUDGET, 0), repeats)
    ranking = _median(lambda: _rank_and_predictions(slide, task_ids, picks=picking[2], open_tiles=open_tiles,
                                                    proba=proba), repeats)
    rest, rest_cpu = (sum(step[i] for step in (predict, picking, ranking)) for i in (0, 1))
    fit_cells = " | ".join(f"{fits[p][0]:.3f} ({fits[p][2].n_epochs_})" for p in PRESETS)
    return (f"| {features.shape[1]} | {len(y):,} | {fit_cells} | {predict[0]:.3f} | {picking[0]:.3f} | "
            f"{ranking[0]:.3f} | **{fits['adam'][0] + rest:.3f}** | {fits['adam'][1] + rest_cpu:.3f} | "
            f"{fits['paper-sgd'][0] + rest:.3f} |")


def _rank_and_predictions(slide: SyntheticSlide, task_ids: np.ndarray, picks: np.ndarray, open_tiles: np.ndarray,
                          proba: np.ndarray) -> list[dict]:
    """What run_retrain does after the picks: the open tasks in rank order, one prediction each."""
    order = rank_tiles(task_ids, picks, [int(t) for t in open_tiles])
    first = {int(t): i for i, t in reversed(list(enumerate(task_ids)))}
    preds = []
    for tile_index, score in zip(order, rank_to_score(len(order))):
        tile = slide.tiles[tile_index]
        rows = proba[first[tile_index] : first[tile_index] + len(tile.cells)]
        preds.append({"task": tile_index, **tile_prediction(tile, rows, CLASSES, "hali-v0001", score)})
    return preds


def _median(run: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(median wall s, median CPU s, last result) of ``repeats`` runs."""
    wall, cpu, _, result = benchutil.median_wall_cpu(run, repeats, warmup=0)
    return wall, cpu, result


def _warm_up() -> None:
    """The first torch optimiser imports torch._dynamo (seconds); the worker pays that once at start."""
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    for preset in PRESETS:
        HeadClassifier(2, optimizer=preset, max_epochs=1).fit(x, np.arange(64) % 2)


def _ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="46-d, 20k cells, N = 100 and 1,000, one run, no Label Studio: a smoke run")
    parser.add_argument("--pool", type=int, default=None, help="cells in the synthetic slide (default 100,000)")
    parser.add_argument("--labels", default=None, help="comma-separated label counts (default 100,...,5000)")
    parser.add_argument("--dims", default=None, help="feature sizes (default 46,512)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3, --quick 1)")
    parser.add_argument("--strategy", default="coreset", help="query strategy (ml_backend.ordering.strategies)")
    parser.add_argument("--no-ls", action="store_true", help="skip the real Label Studio retrain")
    parser.add_argument("--ls-cells", type=int, default=20_000)
    parser.add_argument("--ls-labels", type=int, default=1_000)
    parser.add_argument("--ls-repeats", type=int, default=3)
    args = parser.parse_args()
    if args.ls_labels > args.ls_cells or math.ceil(args.ls_labels / 200) >= math.ceil(args.ls_cells / 200):
        parser.error("--ls-labels must leave at least one 200-cell tile unlabelled in --ls-cells")
    return args


if __name__ == "__main__":
    sys.exit(main())
