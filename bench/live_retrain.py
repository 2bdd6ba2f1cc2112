"""A real ``run_retrain`` against a real Label Studio and redis-server, timed by part (for bench_retrain.py).

Not a bench itself. Starts both services on free loopback ports through ``scripts/stack.py`` (Label
Studio from the integration tests' cached data dir in ``.state/test-cache`` when there is one, else a
cold start), imports a synthetic slide's tiles as tasks, the first ones with annotations, writes the
slide's cell table where the backend reads it, and runs the job as the worker would (with
:func:`ml_backend.retrain.job.frozen_gc`, as ``retrain_job``). The gateway and
the label store are wrapped so that every call into Label Studio or Redis is timed; the rest of the
job's time is its compute and its disk I/O (cell table, model files).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from redis import Redis

from adapters.label_studio import LabelStudioGateway
from bench.synthetic import CLASSES, SyntheticSlide, make_slide
from label_config import build_label_config, cell_to_region
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.job import frozen_gc
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout
from scripts import services

# The integration tests' cached Label Studio (tests/integration/conftest.py): same admin, same token.
_CACHE_DIR = services.REPO_ROOT / ".state" / "test-cache"
_ADMIN_EMAIL, _ADMIN_PASSWORD = "admin@hali.test", "hali-test-admin"
_ADMIN_TOKEN = hashlib.sha1(b"hali integration tests").hexdigest()


class Timed:
    """``target`` with each method call's wall time added to ``ledger[method name]``.

    A method that returns a generator is drained inside the timing (the retrain lists it at once anyway).
    """

    def __init__(self, target: Any, ledger: dict[str, float]) -> None:
        self._target, self._ledger = target, ledger

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                out = attr(*args, **kwargs)
                return iter(list(out)) if isinstance(out, types.GeneratorType) else out
            finally:
                self._ledger[name] += time.perf_counter() - start

        return timed_call


def bench_live_retrain(n_cells: int, n_labels: int, repeats: int) -> str:
    """Markdown lines: median seconds of ``run_retrain`` and of its parts, over ``repeats`` runs."""
    with tempfile.TemporaryDirectory(prefix="hali-bench-") as tmp:
        root, redis_port = Path(tmp), services.free_port()
        try:
            redis_proc = services.start_redis(redis_port, root / "redis")
        except services.StackError as exc:
            return f"skipped: {exc}"
        try:
            return _with_redis(root, redis_port, n_cells, n_labels, repeats)
        finally:
            services.stop_process(redis_proc)


def _with_redis(root: Path, redis_port: int, n_cells: int, n_labels: int, repeats: int) -> str:
    try:
        ls_proc, url, token, started_s = _start_label_studio(root)
    except services.StackError as exc:
        return f"skipped: {exc}"
    try:
        settings = BackendSettings(data_dir=root / "data", ls_files_root=root / "ls-files", ls_url=url,
                                   ls_api_key=token, redis_url=f"redis://{services.LOOPBACK}:{redis_port}/0")
        gateway = LabelStudioGateway.connect(url, token)
        slide = make_slide(n_cells, 46, seed=46)
        slide.save_cell_table(DataLayout(settings.data_dir, settings.ls_files_root))
        project_id = _make_project(gateway, slide, n_labels)
        runs = [_one_retrain(project_id, settings, gateway) for _ in range(repeats)]
    finally:
        services.stop_process(ls_proc)
    return _table(runs, started_s)


def _start_label_studio(root: Path) -> tuple[Any, str, str, float]:
    """(process, url, API token, seconds to start) of a Label Studio with a data dir under ``root``."""
    ls_bin = services.find_label_studio()
    key = hashlib.sha1(f"{ls_bin.resolve()}:{ls_bin.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    template, data_dir = _CACHE_DIR / f"label-studio-{key}", root / "label-studio"
    if template.exists():
        shutil.copytree(template, data_dir)
        password, token = _ADMIN_PASSWORD, _ADMIN_TOKEN
    else:
        password, token = os.urandom(12).hex(), os.urandom(20).hex()
    port, start = services.free_port(), time.perf_counter()
    proc = services.start_label_studio(port, data_dir, root / "ls-files", _ADMIN_EMAIL, password, token, ls_bin)
    return proc, f"http://{services.LOOPBACK}:{port}", token, time.perf_counter() - start


def _make_project(gateway: LabelStudioGateway, slide: SyntheticSlide, n_labels: int) -> int:
    """A project with one task per tile; the first ``n_labels`` cells are labelled by imported annotations."""
    project = gateway.create_project(f"HALI bench {os.getpid()}", build_label_config(CLASSES))
    tasks = []
    for i, tile in enumerate(slide.tiles):
        task: dict[str, Any] = {"data": tile.to_task_data()}
        rows = np.flatnonzero((slide.tile_of_cell == i) & (np.arange(len(slide.y)) < n_labels))
        if len(rows):
            first = i * len(tile.cells)
            result = [cell_to_region(tile.cells[r - first], tile, CLASSES[slide.y[r]]) for r in rows]
            task["annotations"] = [{"result": result}]
        tasks.append(task)
    gateway.import_tasks(project.id, tasks)
    return project.id


def _one_retrain(project_id: int, settings: BackendSettings, gateway: LabelStudioGateway) -> dict[str, float]:
    """Seconds of one run_retrain: ``total``, ``LS <method>`` per gateway method, ``redis``; and its counts."""
    ls_calls: dict[str, float] = defaultdict(float)
    redis_calls: dict[str, float] = defaultdict(float)
    store = Timed(RedisLabelStore(Redis.from_url(settings.redis_url)), redis_calls)
    start = time.perf_counter()
    with frozen_gc():  # as retrain_job does
        report = run_retrain(project_id, settings, Timed(gateway, ls_calls), store)
    figures = {f"LS {name}": seconds for name, seconds in ls_calls.items()}
    figures.update(total=time.perf_counter() - start, redis=sum(redis_calls.values()),
                   labels=report.n_labels, open_tasks=report.n_open_tasks)
    return figures


def _table(runs: list[dict[str, float]], started_s: float) -> str:
    median: Callable[[str], float] = lambda key: statistics.median(r.get(key, 0.0) for r in runs)  # noqa: E731
    ls_keys = sorted(k for k in runs[0] if k.startswith("LS "))
    ls_total = statistics.median(sum(r[k] for k in ls_keys) for r in runs)
    compute = statistics.median(r["total"] - sum(r[k] for k in ls_keys) - r["redis"] for r in runs)
    total = median("total")
    lines = [f"Label Studio started in {started_s:.1f} s; {int(runs[0]['labels']):,} labels, "
             f"{int(runs[0]['open_tasks']):,} open tasks ranked per run; medians of {len(runs)} run(s)",
             "| part | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {median(k):.3f} | {median(k) / total:.0%} |" for k in ls_keys]
    lines += [f"| all Label Studio calls | {ls_total:.3f} | {ls_total / total:.0%} |",
              f"| Redis calls | {median('redis'):.3f} | {median('redis') / total:.0%} |",
              f"| compute and disk (the rest) | {compute:.3f} | {compute / total:.0%} |",
              f"| **run_retrain** | **{total:.3f}** | 100% |"]
    dominant = "Label Studio I/O" if ls_total > compute else "compute"
    lines.append(f"dominant part: {dominant}")
    return "\n".join(lines)
