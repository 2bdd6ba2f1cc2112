"""Where a worker's memory goes at a lab's scale: a retrain's in-memory steps, without Label Studio.

    .venv/bin/python bench/bench_worker_memory.py [--cells 1000000] [--labels 10000] [--retrains 3]

Writes a synthetic slide (``--cells`` cells, 46-d features, tasks of 20 cells) with its cell table,
``tasks.json`` and a task map into a temporary data dir, as ``bench_scale`` does. Then a child process (a
fresh worker: its peak RSS is its own) imports what a worker imports, loads the tiles, the cell table and the
layout, and runs ``--retrains`` times what :func:`ml_backend.retrain.run.run_retrain` does between reading
the labels and pushing: gather the cells, fit, predict, rank, build the top-K predictions and score the gold
cells. It prints, after each step, the process's RSS and its peak so far (``VmRSS``, ``VmHWM``) in MB, and
the step's seconds. Label Studio's read, push and switch are not in it (bench_scale times those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS_PER_TASK = 20
PROJECT_ID = 1


def main() -> int:
    args = _parse_args()
    if args.child:
        _child(json.loads(args.child))
        return 0
    from adapters.storage import LocalStorage
    from bench.synthetic import make_slide
    from preprocess.layout import DataLayout, write_task_map

    with tempfile.TemporaryDirectory(prefix="hali-mem-") as tmp:
        data, files = Path(tmp) / "data", Path(tmp) / "ls-files"
        t0 = time.perf_counter()
        slide = make_slide(args.cells, 46, cells_per_tile=CELLS_PER_TASK, seed=46, slide_id="mem-slide")
        slide.save_cell_table(DataLayout(data, files))
        write_task_map(LocalStorage(data), PROJECT_ID, slide.slide_id,
                       {t.tile_id: i + 1 for i, t in enumerate(slide.tiles)})
        print(f"slide of {len(slide.y):,} cells written in {time.perf_counter() - t0:.1f} s", flush=True)
        del slide
        job = {"labels": args.labels, "retrains": args.retrains}
        env = {**os.environ, "HALI_DATA_DIR": str(data), "HALI_LS_FILES_ROOT": str(files),
               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], env=env, check=False)
        return done.returncode


def _mb() -> tuple[float, float]:
    status = Path("/proc/self/status").read_text().split("\n")
    value = {line.split(":")[0]: float(line.split()[1]) / 1024 for line in status if line.startswith("Vm")}
    return value["VmRSS"], value["VmHWM"]


class _Steps:
    def __init__(self) -> None:
        self._last = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        rss, peak = _mb()
        print(f"{step:<28} rss {rss:7.0f} MB  peak {peak:7.0f} MB  {now - self._last:6.2f} s", flush=True)
        self._last = time.perf_counter()


def _child(job: dict) -> None:
    step = _Steps()
    step("start")
    import numpy as np
    import torch

    from adapters.storage import LocalStorage
    from bench.synthetic import CLASSES
    from ml_backend.labels.mirror import project_tiles
    from ml_backend.model.gold import training_labels
    from ml_backend.ordering.strategies import get_strategy
    from ml_backend.retrain import run
    from ml_backend.retrain.cells import LAYOUTS, cell_features, gather_cells, sample_open_tasks
    from ml_backend.retrain.job import frozen_gc
    from ml_backend.settings import BackendSettings
    from ml_backend.suggestions.predictions import not_nucleus_mask

    step("imports")
    settings = BackendSettings()
    torch.set_num_threads(settings.torch_threads)
    tiles = project_tiles(PROJECT_ID, None, LocalStorage(Path(settings.data_dir)))  # task maps: no gateway call
    step(f"tiles ({len(tiles):,} tasks)")
    features = cell_features(settings)
    layout = LAYOUTS.get(PROJECT_ID, tiles, features)
    step(f"layout ({len(layout):,} cells)")
    targets = [*CLASSES, "Not a nucleus"]
    rng = np.random.default_rng(0)
    labels: dict[str, str] = {}
    for task_id in sorted(tiles)[: job["labels"] // CELLS_PER_TASK]:
        labels.update((c.cell_id, CLASSES[int(rng.integers(len(CLASSES)))]) for c in tiles[task_id].cells)
    for round_ in range(job["retrains"]):
        labelled = {t for t in sorted(tiles)[: len(labels) // CELLS_PER_TASK]}
        open_ids = sorted(set(tiles) - labelled)
        with frozen_gc():
            pool = sample_open_tasks(open_ids, [], tiles, settings.rank_pool_cells, seed=len(labels))
            cells = gather_cells(LAYOUTS.get(PROJECT_ID, tiles, features), tiles, pool, labelled,
                                 training_labels(labels, settings.gold_share), targets, features)
            step(f"round {round_}: cells")
            strategy = get_strategy(settings.strategy)
            head = run._fit_head(cells, len(targets), settings, False)
            step(f"round {round_}: fit")
            proba, shown = run._cells_proba(cells, head, features)
            excluded = not_nucleus_mask(shown, targets) & (cells.y < 0)
            order = run._rank_open_tasks(cells, head, proba, pool, settings, strategy, excluded, cells.slides)
            order = run._exploit(order, cells, shown, open_ids, settings, n_served=len(labelled))
            step(f"round {round_}: rank")
            top = order[: settings.predictions_top_k]
            preds = run._predictions(top, tiles, cells, shown, targets, "bench")
            run._gold_metrics({t: tiles[t] for t in labelled}, labels, targets, head, settings, features)
            step(f"round {round_}: predictions + gold")
            del cells, proba, shown, excluded, preds
        task = top[0]
        labels.update((c.cell_id, CLASSES[int(rng.integers(len(CLASSES)))]) for c in tiles[task].cells[:5])
    step("end")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--retrains", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
