"""Dashboard speed on a synthetic million-cell project: the worker's snapshot, and the server's page and plots.

    .venv/bin/python bench/bench_dashboard.py [--cells 1000000] [--cells-per-task 20] [--labelled-tasks 5000]
        [--slides 20] [--annotators 10] [--versions 300] [--repeats 5]

Builds in memory what a retrain holds (tiles of every task, annotations with region origins, merged labels),
then times:

- ``worker: snapshot``: annotation facts + every figure (``build_snapshot``), once per retrain;
- ``worker: coverage``: the coverage map of one slide (a slide is redrawn only when its labels changed);
- ``server: page``: ``GET /dashboard/<p>`` through Flask's test client (target: < 1 s for 1M cells);
- ``server: metrics``: ``GET /metrics/<p>`` as JSON and as Prometheus text;
- ``server: plot``: ``GET /dashboard/<p>/<plot>.png`` the first time (drawn) and again (cached).

Redis is not needed: the page's one live figure (labels pending) comes from a store stub.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchutil import footer, header, median_seconds, timed
from label_config import NOT_NUCLEUS_LABEL, CellBox, LabelSet, TileTask, cells_to_regions
from ml_backend.dashboard.coverage import coverage_png
from ml_backend.dashboard.metrics import facts_from_records
from ml_backend.dashboard.snapshot import build_snapshot
from ml_backend.dashboard.store import DashboardFiles
from ml_backend.http.dashboard import dashboard_blueprint
from ml_backend.labels.records import record_from_annotation
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout

LABELS = LabelSet(("Tumor", "Lymphocyte", "Stroma", "Other"))
COLOURS = {"Tumor": (214, 39, 40), "Lymphocyte": (31, 119, 180), "Stroma": (44, 160, 44), "Other": (255, 127, 14),
           NOT_NUCLEUS_LABEL: (0, 0, 0)}


def synthetic_project(args, rng):
    """(tiles {task id: TileTask}, tasks with annotations, annotation id -> labels, merged labels)."""
    n_tasks = args.cells // args.cells_per_task
    side = int(np.ceil(np.sqrt(n_tasks / args.slides)))
    tiles = {}
    for t in range(n_tasks):
        slide, k = t % args.slides, t // args.slides
        x0, y0 = (k % side) * 256, (k // side) * 256
        cells = tuple(CellBox(f"s{slide}-{t}-{i}", x0 + 12 * (i % 20), y0 + 12 * (i // 20) + 20, 10, 10)
                      for i in range(args.cells_per_task))
        tiles[t + 1] = TileTask(f"t{t}", f"slide{slide:02d}", "/x.png", x0, y0, 256, 256, 1.0, 0.5, cells)
    targets = list(LABELS.targets)
    tasks, by_annotation, merged = [], {}, {}
    aid = 0
    for task_id in rng.choice(list(tiles), size=args.labelled_tasks, replace=False).tolist():
        tile = tiles[task_id]
        annotations = []
        for _ in range(2 if rng.random() < 0.1 else 1):  # a tenth of the tasks overlap
            aid += 1
            labels = [targets[k] for k in rng.integers(0, len(targets), len(tile.cells))]
            regions = cells_to_regions(tile.cells, tile, labels)
            for region in regions:
                region["origin"] = "prediction" if rng.random() < 0.7 else "prediction-changed"
            annotations.append({"id": aid, "result": regions, "completed_by": int(rng.integers(0, args.annotators)),
                                "lead_time": float(rng.uniform(20, 90)), "parent_prediction": aid,
                                "updated_at": f"2026-11-{1 + aid % 28:02d}T10:00:00Z"})
            by_annotation[aid] = {c.cell_id: lab for c, lab in zip(tile.cells, labels)}
            merged.update(by_annotation[aid])
        tasks.append({"id": task_id, "annotations": annotations})
    return tiles, tasks, by_annotation, merged


def sidecars(n_versions: int) -> list[dict]:
    return [{"version": v, "model_version": f"hali-v{v:04d}", "created_at": f"2026-11-01T00:{v % 60:02d}:00+00:00",
             "metrics": {"n_labels": 300 * v, "n_train": 270 * v,
                         "gold": {"n": 30 * v, "accuracy": 0.9, "balanced_accuracy": 0.85}}}
            for v in range(1, n_versions + 1)]


class _Pending:
    def pending(self, project_id: int) -> int:
        return 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--cells-per-task", type=int, default=20)
    parser.add_argument("--labelled-tasks", type=int, default=5000)
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--annotators", type=int, default=10)
    parser.add_argument("--versions", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(header("Dashboard speed (bench/bench_dashboard.py)", " ".join(sys.argv)))
    rng = np.random.default_rng(0)
    build_s, (tiles, tasks, by_annotation, merged) = timed(lambda: synthetic_project(args, rng))
    names = {i: f"annotator{i}@lab.org" for i in range(args.annotators)}
    versions = {aid: f"hali-v{1 + aid % args.versions:04d}" for aid in by_annotation}
    print(f"{len(tiles):,} tasks, {sum(len(t.cells) for t in tiles.values()):,} cells on {args.slides} slides; "
          f"{len(by_annotation):,} annotations, {len(merged):,} labelled cells; {args.versions} versions "
          f"(synthetic project built in {build_s:.1f} s)")

    records = {int(ann["id"]): record_from_annotation(ann, task["id"], tiles[task["id"]], LABELS)[0]
               for task in tasks for ann in task["annotations"]}  # the label mirror's records

    def snapshot():
        facts = facts_from_records(records, tiles, names)
        return build_snapshot(1, facts, tiles, merged, LABELS.targets, sidecars(args.versions), versions, COLOURS, 0.1)

    rows = []
    snap_s, _, snap = median_seconds(snapshot, max(1, args.repeats // 2), warmup=0)
    rows.append(("worker: snapshot (facts + figures)", snap_s))
    one_slide = [t for t in tiles.values() if t.slide_id == "slide00"]
    done = {tiles[t["id"]].tile_id for t in tasks}
    cov_s, _, png = median_seconds(lambda: coverage_png(one_slide, done, merged, COLOURS), 3, warmup=0)
    rows.append((f"worker: coverage map of one slide ({len(one_slide):,} tasks, {len(png) // 1024} KB)", cov_s))

    with tempfile.TemporaryDirectory() as tmp:
        settings = BackendSettings(data_dir=Path(tmp), ls_files_root=Path(tmp))
        files = DashboardFiles(DataLayout(settings.data_dir, settings.ls_files_root).models_dir(1))
        snap["coverage"] = [f"slide{s:02d}" for s in range(args.slides)]
        files.write_snapshot(snap)
        print(f"snapshot.json: {files.snapshot_path.stat().st_size / 1e3:.0f} KB")
        from flask import Flask

        app = Flask(__name__)
        app.register_blueprint(dashboard_blueprint(settings, _Pending()))
        client = app.test_client()
        for label, path in (("server: page GET /dashboard/1", "/dashboard/1"),
                            ("server: GET /metrics/1 (JSON)", "/metrics/1"),
                            ("server: GET /metrics?format=prometheus", "/metrics?format=prometheus")):
            seconds, _, resp = median_seconds(lambda p=path: client.get(p), args.repeats)
            assert resp.status_code == 200, (path, resp.status_code)
            rows.append((f"{label} ({len(resp.data) // 1024} KB)", seconds))
        for plot in ("progress", "annotators", "acceptance", "learning"):
            first = time.perf_counter()
            resp = client.get(f"/dashboard/1/{plot}.png")
            first = time.perf_counter() - first
            assert resp.status_code == 200
            again, _, _ = median_seconds(lambda p=plot: client.get(f"/dashboard/1/{p}.png"), args.repeats, warmup=0)
            rows.append((f"server: {plot}.png first / cached ({len(resp.data) // 1024} KB)", (first, again)))
    print(f"{'step':64s} seconds")
    for label, value in rows:
        shown = f"{value[0]:.3f} / {value[1]:.4f}" if isinstance(value, tuple) else f"{value:.3f}"
        print(f"  {label:62s} {shown}")
    print(footer())


if __name__ == "__main__":
    main()
