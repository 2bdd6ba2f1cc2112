"""Export speed: 100,000 labelled cells (5,000 tasks of 20) from Label Studio's JSON to CSV, GeoJSON and COCO.

    .venv/bin/python bench/bench_export.py [--tasks 5000] [--cells 20] [--repeats 3]

Times the pure part of ``hali export`` (rows + each format) on a synthetic export; Label Studio's own
JSON export of the project comes on top and is not timed here. Target (issue): 100k cells < 30 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.benchutil import median_seconds  # noqa: E402
from label_config import CellBox, TileTask, build_label_config, cell_to_region  # noqa: E402
from ml_backend.export.formats import label_colours, to_coco, to_csv, to_geojson  # noqa: E402
from ml_backend.export.rows import cell_rows  # noqa: E402

CLASSES = ["Tumor", "Lymphocyte", "Stroma", "Other"]


def synthetic_export(n_tasks: int, n_cells: int) -> list[dict]:
    tasks = []
    for t in range(n_tasks):
        x0, y0 = (t % 100) * 300, (t // 100) * 300
        cells = tuple(CellBox(f"s-{t}-{i}", x0 + 10 + 14 * (i % 10), y0 + 10 + 40 * (i // 10), 12, 12)
                      for i in range(n_cells))
        tile = TileTask(f"t{t}", f"slide{t % 5}", f"/img/{t}.png", x0, y0, 150, 150, 2.0, 0.25, cells)
        result = [dict(cell_to_region(c, tile, CLASSES[i % 4]), origin="prediction") for i, c in enumerate(cells)]
        prediction = {"model_version": "hali-v0009", "result": result}
        tasks.append({"id": t + 1, "data": tile.to_task_data(), "predictions": [],
                      "annotations": [{"id": t + 1, "completed_by": 3, "result": result, "lead_time": 20.0,
                                       "updated_at": "2026-12-01T10:00:00Z", "prediction": prediction}]})
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tasks = synthetic_export(args.tasks, args.cells)
    colours = label_colours(build_label_config(CLASSES))
    steps = {"rows": lambda: cell_rows(tasks)}
    rows = cell_rows(tasks)
    steps.update({"csv": lambda: to_csv(rows), "geojson": lambda: json.dumps(to_geojson(rows, colours)),
                  "coco": lambda: json.dumps(to_coco(rows, tasks, CLASSES))})
    print(f"{len(rows):,} labelled cells in {len(tasks):,} tasks; median of {args.repeats} runs")
    for name, step in steps.items():
        median, times, _ = median_seconds(step, args.repeats, warmup=0)
        print(f"  {name:8s} {median:6.2f} s  (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    main()
