"""Label -> new version live at a lab's scale, in a real Label Studio (on PostgreSQL) and redis-server.

    .venv/bin/python bench/bench_scale.py [--cells 10000,100000] [--labels 1000] [--retrains 20] [--top-k 100]
                                          [--db postgres|sqlite] [--out rounds.json] [--profile FILE]

One Label Studio serves every size of a run: on its own PostgreSQL 15 cluster under gunicorn (2 workers x 4
threads, as ``make up``), or ``--db sqlite`` (its embedded SQLite and development server). Per project size C
(``--cells``): a synthetic slide of C cells (46-d features, 4 classes) in tasks of 20 cells, imported into a
fresh project as ``hali preprocess`` does (each task with its ``hali-v0000`` neutral boxes), the first
``--labels`` cells labelled by imported annotations, the cell table written where the backend reads it. Then a
**worker process** (a child, so its peak RSS is the worker's alone; it runs every retrain in-process, as
``hali worker`` does) first reconciles every task once, as a worker does when it starts, then runs
``--retrains`` rounds of: an annotator submits 5 labels on the top-ranked task (one API call, as the UI's
Submit), then :func:`ml_backend.retrain.run.run_retrain` runs as the rq job would, up to and past the switch.

Per size the table gives:

- Label Studio's import time for the tasks (tasks per second);
- the worker's start-up reconcile and its **first retrain** (cold: it reads the tiles, cell tables and
  neighbour graph the next ones find in memory);
- **label -> live** over the other rounds: from the submit to the end of the switch (the new version and
  order served: the first ``HALI_PREDICTIONS_FIRST_N`` of the top K pushed; the rest, "fill", follows), median
  and p95. The rq hand-off (webhook, enqueue, a worker's dequeue) is not in it: on an
  idle worker it adds well under a second;
- the whole retrain with its pruning and its dashboard snapshot (both after the switch), its phases' medians,
  and the phases of the slowest round;
- the **prediction rows** in Label Studio after the rounds, against the target of tasks + K;
- the worker's **peak RSS** (``VmHWM``); ``--out`` also has it after the start-up reconcile and after each round.

No ML backend is connected (static mode, as a project without ``--backend-url``): the backend's renaming to
the live version, which makes Label Studio call the backend's /health and /setup, is not timed here.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.label_studio import LabelStudioGateway  # noqa: E402
from adapters.storage import LocalStorage  # noqa: E402
from bench import benchutil  # noqa: E402
from bench.live_retrain import _start_label_studio  # noqa: E402
from bench.synthetic import CLASSES, SyntheticSlide, make_slide  # noqa: E402
from label_config import TileTask, build_label_config, cell_to_region, parse_label_set, version_name  # noqa: E402
from preprocess.layout import DataLayout, write_task_map  # noqa: E402
from preprocess.tiles.tasks import task_payloads  # noqa: E402
from scripts import postgres, services  # noqa: E402

CELLS_PER_TASK = 20
LABELS_PER_SUBMIT = 5


@dataclass(frozen=True)
class Stack:
    """The Label Studio and redis-server of a run, and where the backend's files go."""

    root: Path
    url: str
    token: str
    redis_url: str


def main() -> int:
    args = _parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    print(benchutil.header("Label -> new version live, by project size",
                           " ".join(["bench/bench_scale.py", *sys.argv[1:]])))
    rounds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hali-scale-") as tmp, _stack(Path(tmp), args.db) as stack:
        print(f"\nLabel Studio on {args.db}; {args.labels:,} labels imported, then {args.retrains} rounds of "
              f"{LABELS_PER_SUBMIT} labels + a retrain; K = {args.top_k}; seconds unless said")
        print("| cells | tasks | LS import (tasks/s) | start reconcile | first retrain (cold) | label -> live median | "
              "p95 | retrain + prune median | phases (median s) | slowest round's phases | prediction rows after | "
              "tasks + K | worker peak RSS MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|")
        for n_cells in [int(c.replace("_", "")) for c in args.cells.split(",")]:
            profile = f"{args.profile}.{n_cells}" if args.profile else None
            line, rounds[str(n_cells)] = _row(stack, n_cells, args.labels, args.retrains, args.top_k, profile)
            print(line, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rounds, indent=1))
    print(benchutil.footer())
    return 0


@contextmanager
def _stack(root: Path, db: str) -> Iterator[Stack]:
    """Redis and a Label Studio (``db``: ``postgres``, its own cluster and gunicorn; ``sqlite``) under ``root``."""
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
    with ExitStack() as stop:
        redis_port = services.free_port()
        stop.callback(services.stop_process, services.start_redis(redis_port, root / "redis"))
        if db == "sqlite":
            ls_proc, url, token, _ = _start_label_studio(root)
        else:
            pg_port, pg_password, token = services.free_port(), secrets.token_urlsafe(12), secrets.token_hex(20)
            pg = postgres.start_postgres(postgres.find_postgres(), pg_port, root / "pg" / "data", pg_password)
            stop.callback(postgres.stop_postgres, pg.pid)
            port = services.free_port()
            ls_proc = services.start_label_studio(
                port, root / "label-studio", root / "ls-files", "admin@hali.test", secrets.token_urlsafe(12), token,
                database=postgres.label_studio_db_env(pg_port, pg_password), gunicorn_workers=2)
            url = f"http://{services.LOOPBACK}:{port}"
        stop.callback(services.stop_process, ls_proc)
        yield Stack(root, url, token, f"redis://{services.LOOPBACK}:{redis_port}/0")


def _row(stack: Stack, n_cells: int, n_labels: int, retrains: int, top_k: int,
         profile: str | None = None) -> tuple[str, dict[str, Any]]:
    data = stack.root / f"data-{n_cells}"
    env = {"HALI_DATA_DIR": str(data), "HALI_LS_FILES_ROOT": str(stack.root / "ls-files"),
           "HALI_LS_URL": stack.url, "HALI_LS_API_KEY": stack.token, "HALI_PREDICTIONS_TOP_K": str(top_k),
           "HALI_REDIS_URL": stack.redis_url}
    slide = make_slide(n_cells, 46, cells_per_tile=CELLS_PER_TASK, seed=46, slide_id=f"bench-slide-{n_cells}")
    slide.save_cell_table(DataLayout(data, stack.root / "ls-files"))
    gateway = LabelStudioGateway.connect(stack.url, stack.token, timeout_s=600)
    import_s, project_id = benchutil.timed(lambda: _make_project(gateway, slide, n_labels, LocalStorage(data)))
    out = _run_worker(env, {"project_id": project_id, "retrains": retrains, "profile": profile})
    rows = sum(gateway.model_versions(project_id).values())
    n_tasks = gateway.get_project(project_id).task_number
    live, total = out["live_s"][1:], out["total_s"][1:]
    phases = ", ".join(f"{k} {statistics.median(v[1:]):.2f}" for k, v in out["phases"].items())
    slowest = 1 + int(np.argmax(live))
    slow = ", ".join(f"{k} {v[slowest]:.2f}" for k, v in out["phases"].items() if len(v) > slowest)
    line = (f"| {n_cells:,} | {n_tasks:,} | {import_s:.0f} s ({n_tasks / import_s:.0f}) | {out['start_s']:.1f} | "
            f"{out['live_s'][0]:.2f} | **{statistics.median(live):.2f}** | {benchutil.percentile(live, 95):.2f} | "
            f"{statistics.median(total):.2f} | {phases} | {slow} | **{rows:,}** | {n_tasks + top_k:,} | "
            f"{out['peak_rss_mb']:.0f} |")
    return line, {**out, "import_s": import_s, "tasks": n_tasks, "prediction_rows": rows}


def _make_project(gateway: LabelStudioGateway, slide: SyntheticSlide, n_labels: int, tables: LocalStorage) -> int:
    """A project as ``hali preprocess`` makes it (neutral boxes as ``hali-v0000``), the first ``n_labels``
    cells labelled by imported annotations; serves ``hali-v0000``."""
    config = build_label_config(CLASSES)
    project = gateway.create_project(f"HALI scale {os.getpid()} {len(slide.y)}", config)
    tasks = task_payloads(slide.tiles, version_name(0), neutral=parse_label_set(config).neutral)
    for i, (task, tile) in enumerate(zip(tasks, slide.tiles)):
        first = i * CELLS_PER_TASK
        if first >= n_labels:
            break
        rows = range(first, min(first + CELLS_PER_TASK, n_labels))
        task["annotations"] = [{"result": [cell_to_region(tile.cells[r - first], tile, CLASSES[slide.y[r]])
                                           for r in rows]}]
    ids = gateway.import_tasks(project.id, tasks)
    write_task_map(tables, project.id, slide.slide_id, {t.tile_id: i for t, i in zip(slide.tiles, ids)})
    gateway.serve_version(project.id, version_name(0))
    return project.id


def _run_worker(env: dict[str, str], job: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`_worker` in a child process (the worker); its JSON answer."""
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=child_env, text=True,
                          capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """``retrains`` rounds of (5 labels submitted on the top task, run_retrain), as the rq worker runs them."""
    import torch
    from redis import Redis

    from ml_backend.labels.reconcile import reconcile_full
    from ml_backend.labels.redis_store import RedisLabelStore
    from ml_backend.retrain.job import frozen_gc
    from ml_backend.retrain.run import run_retrain
    from ml_backend.settings import BackendSettings

    settings = BackendSettings()
    torch.set_num_threads(settings.torch_threads)
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value(), timeout_s=600)
    store = RedisLabelStore(Redis.from_url(settings.redis_url))
    project_id, rng = job["project_id"], np.random.default_rng(0)
    live, total, phases = [], [], {}
    label_set = parse_label_set(gateway.get_project(project_id).label_config)
    start_s, _ = benchutil.timed(lambda: reconcile_full(project_id, gateway, store, label_set))  # the worker's start
    start_peak_mb = _peak_rss_mb()
    top, peaks = _first_open_task(gateway, project_id), []
    profiler = cProfile.Profile() if job.get("profile") else None
    for i in range(job["retrains"]):
        start = time.perf_counter()
        _submit_labels(gateway, top, rng)
        called = time.perf_counter()
        if profiler is not None and i > 0:  # the warm rounds: the first reads tiles, tables and graphs
            profiler.enable()
        with frozen_gc():
            report = run_retrain(project_id, settings, gateway, store)
        if profiler is not None:
            profiler.disable()
        end = time.perf_counter()
        laps = dict(report.metrics["seconds_by_phase"])
        laps["dashboard"] = end - called - report.seconds  # after the lease, the new version already live
        live.append(called - start + report.seconds - laps.get("fill", 0.0) - laps.get("prune", 0.0))
        total.append(end - start)
        for phase, seconds in laps.items():
            phases.setdefault(phase, []).append(seconds)
        top = report.next_task_ids[0]
        peaks.append(_peak_rss_mb())
    peak_mb = _peak_rss_mb()
    if profiler is not None:
        profiler.dump_stats(job["profile"])
    return {"start_s": start_s, "live_s": live, "total_s": total, "phases": phases, "peak_rss_mb": peak_mb,
            "peak_rss_mb_after_start": start_peak_mb, "peak_rss_mb_after_round": peaks}


def _peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``). Not ``ru_maxrss``: Linux keeps it across exec, so a child started
    by a bench process holding a 1M-cell synthetic slide reported the bench's 2.1 GB as its own."""
    status = Path("/proc/self/status").read_text()
    return float(status.split("VmHWM:")[1].split()[0]) / 1024


def _first_open_task(gateway: LabelStudioGateway, project_id: int) -> int:
    tasks = gateway._client.tasks.list(project=project_id, fields="all", include="id,total_annotations",
                                       page_size=1000)
    return next(t.id for t in tasks if not t.total_annotations)


def _submit_labels(gateway: LabelStudioGateway, task_id: int, rng: np.random.Generator) -> None:
    """One annotation giving 5 of the task's cells a class, as the UI's Submit posts it."""
    tile = TileTask.from_task_data(gateway._client.tasks.get(id=task_id).data)
    picks = rng.choice(len(tile.cells), size=LABELS_PER_SUBMIT, replace=False)
    result = [cell_to_region(tile.cells[i], tile, CLASSES[int(rng.integers(len(CLASSES)))]) for i in picks]
    gateway._client.annotations.create(id=task_id, result=result, lead_time=10.0)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="10000,100000", help="project sizes in cells, comma-separated")
    parser.add_argument("--labels", type=int, default=1000, help="labels imported before the rounds")
    parser.add_argument("--retrains", type=int, default=20, help="rounds of 5 labels + a retrain per size")
    parser.add_argument("--top-k", type=int, default=100, help="HALI_PREDICTIONS_TOP_K")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres", help="Label Studio's database")
    parser.add_argument("--out", default=None, help="write every round's figures to this JSON file")
    parser.add_argument("--profile", default=None, help="write a cProfile of the worker's warm retrains (all but the "
                        "first) to this file (read it with `python -m pstats FILE`)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
