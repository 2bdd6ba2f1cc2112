"""The retrain's read phase on a project of a few thousand tasks: every task listed (before) vs the label mirror.

    .venv/bin/python bench/bench_label_read.py [--tasks 3000] [--labelled 500] [--repeats 3]

A real redis-server and Label Studio (the integration tests' cached data dir when there is one), a synthetic
slide of ``--tasks`` tasks of 20 cells written where preprocessing writes it (cell table, ``tasks.json``, the task
map), the first ``--labelled`` tasks imported with an annotation labelling every cell. Timed, median of
``--repeats``:

- **before**: the read phase as it was: ``gateway.iter_tasks`` (every task with its data, then one annotation
  request per labelled task), records from them, ``store.replace_all``;
- **full reconcile**: every task listed lean with its annotations, compared with the mirror (what the worker
  does when it starts and every ``HALI_FULL_RECONCILE_S``);
- **after, nothing new**: :func:`ml_backend.labels.mirror.read_labels` (an incremental reconcile, the task map,
  the mirror's records and the consensus) when no task changed since the last sync;
- **after, one new annotation**: the same after one more task was labelled (outside the webhooks);
- **run_retrain**: a whole retrain now (nothing new), with its seconds by phase.

Target (issue 10): label -> new version median < 2 s at any project size: the read phase must not grow with it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.label_studio import LabelStudioGateway
from adapters.storage import LocalStorage
from bench import benchutil
from bench.live_retrain import _start_label_studio
from bench.synthetic import CLASSES, make_slide
from label_config import TileTask, build_label_config, cell_to_region, parse_label_set
from ml_backend.labels.mirror import project_tiles, read_labels
from ml_backend.labels.reconcile import MARK_MARGIN_S, reconcile_full, reconcile_incremental
from ml_backend.labels.records import records_from_tasks
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.job import frozen_gc
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout, write_task_map
from scripts import services

CELLS_PER_TASK = 20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=3000)
    p.add_argument("--labelled", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(benchutil.header("Retrain read phase: every task listed vs the label mirror",
                           " ".join(["bench/bench_label_read.py", *sys.argv[1:]])))
    with tempfile.TemporaryDirectory(prefix="hali-bench-") as tmp:
        root, port = Path(tmp), services.free_port()
        redis_proc = services.start_redis(port, root / "redis")
        ls_proc, url, token, started = _start_label_studio(root)
        try:
            print(f"Label Studio started in {started:.1f} s")
            settings = BackendSettings(data_dir=root / "data", ls_files_root=root / "ls-files", ls_url=url,
                                       ls_api_key=token, redis_url=f"redis://{services.LOOPBACK}:{port}/0")
            _run(settings, args)
        finally:
            services.stop_process(ls_proc)
            services.stop_process(redis_proc)
    print(benchutil.footer())
    return 0


def _run(settings: BackendSettings, args: argparse.Namespace) -> None:
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
    store = RedisLabelStore(Redis.from_url(settings.redis_url))
    slide = make_slide(args.tasks * CELLS_PER_TASK, 46, cells_per_tile=CELLS_PER_TASK, seed=46)
    tables = LocalStorage(settings.data_dir)
    slide.save_cell_table(DataLayout(settings.data_dir, settings.ls_files_root))
    seconds, pid = benchutil.timed(lambda: _make_project(gateway, slide, args.labelled, tables))
    n_labels = args.labelled * CELLS_PER_TASK
    print(f"project {pid}: {args.tasks:,} tasks, {args.labelled:,} labelled ({n_labels:,} cell labels), "
          f"imported in {seconds:.0f} s; medians of {args.repeats}\n")
    labels = parse_label_set(gateway.get_project(pid).label_config)
    rows = [("before: list every task + one annotation request per labelled task",
             _median(lambda: _old_read(pid, gateway, store, labels), args.repeats))]
    rows.append(("full reconcile (worker start, every HALI_FULL_RECONCILE_S)",
                 _median(lambda: reconcile_full(pid, gateway, store, labels), args.repeats)))
    time.sleep(MARK_MARGIN_S)  # past the import, as a project in use is
    read = lambda: read_labels(pid, gateway, store, labels, tables)
    rows.append(("after: read_labels, nothing new since the last sync", _median(read, args.repeats)))
    rows.append(("  of which the incremental reconcile (one request)",
                 _median(lambda: reconcile_incremental(pid, gateway, store, labels), args.repeats)))
    rows.append(("  of which the task map (task maps + tasks.json)",
                 _median(lambda: project_tiles(pid, gateway, tables), args.repeats)))
    rows.append(("after: read_labels, one task labelled since (no webhook)",
                 _median(read, args.repeats, before=lambda: _label_one(gateway, pid, slide))))
    print("| read phase | median s | runs |\n|---|---:|---|")
    for name, (median, runs) in rows:
        print(f"| {name} | {median:.3f} | {', '.join(f'{r:.3f}' for r in runs)} |")
    view = read()
    print(f"\nmirror: {len(view.records):,} annotations, {len(view.labels):,} labelled cells, "
          f"{len(view.open_ids):,} open tasks")
    _retrains(pid, settings, gateway, store, args.repeats)


def _retrains(pid: int, settings: BackendSettings, gateway, store, repeats: int) -> None:
    runs = []
    for _ in range(repeats):
        with frozen_gc():
            runs.append(run_retrain(pid, settings, gateway, store))
    phases = {k: statistics.median(r.metrics["seconds_by_phase"][k] for r in runs)
              for k in runs[0].metrics["seconds_by_phase"]}
    print(f"run_retrain (nothing new, top K {settings.predictions_top_k}): median "
          f"{statistics.median(r.seconds for r in runs):.2f} s; by phase " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))


def _median(run, repeats: int, before=None) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        times.append(benchutil.timed(run)[0])
    return statistics.median(times), times


def _old_read(pid: int, gateway: LabelStudioGateway, store: RedisLabelStore, labels) -> None:
    tasks = list(gateway.iter_tasks(pid))
    tiles = {t["id"]: TileTask.from_task_data(t["data"]) for t in tasks}
    store.replace_all(pid, records_from_tasks(tasks, tiles, labels))


_next_unlabelled: list[int] = []


def _label_one(gateway: LabelStudioGateway, pid: int, slide) -> None:
    """One more task labelled through the API (no webhook reaches the backend)."""
    task_id, tile = _next_unlabelled.pop()
    result = [cell_to_region(c, tile, CLASSES[i % len(CLASSES)]) for i, c in enumerate(tile.cells)]
    gateway._client.annotations.create(id=task_id, result=result, lead_time=3.0)


def _make_project(gateway: LabelStudioGateway, slide, n_labelled: int, tables) -> int:
    project = gateway.create_project(f"HALI read bench {id(slide)}", build_label_config(CLASSES))
    tasks: list[dict[str, Any]] = []
    for i, tile in enumerate(slide.tiles):
        task: dict[str, Any] = {"data": tile.to_task_data()}
        if i < n_labelled:
            rows = np.arange(i * CELLS_PER_TASK, (i + 1) * CELLS_PER_TASK)
            task["annotations"] = [{"result": [cell_to_region(tile.cells[j], tile, CLASSES[slide.y[r]])
                                               for j, r in enumerate(rows)], "lead_time": 5.0}]
        tasks.append(task)
    ids = gateway.import_tasks(project.id, tasks)
    write_task_map(tables, project.id, slide.slide_id, {t.tile_id: i for t, i in zip(slide.tiles, ids)})
    _next_unlabelled.extend(zip(ids[-1:n_labelled:-1], slide.tiles[-1:n_labelled:-1]))
    return project.id


if __name__ == "__main__":
    raise SystemExit(main())
