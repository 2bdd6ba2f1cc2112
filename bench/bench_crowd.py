"""Many annotators on one project, and an outage, on a full stack as ``make up`` runs it.

    .venv/bin/python bench/bench_crowd.py                                  # 10 annotators x 10 submits + outage
    .venv/bin/python bench/bench_crowd.py --annotators 20 --submits 50     # the issue's 20 x 50

Starts PostgreSQL, Label Studio on it under gunicorn, redis-server (append-only file), ``hali serve`` under gunicorn
with basic auth and the webhook secret, and ``--workers`` ``hali worker``s (``bench/crowd_stack.py``). Imports a
synthetic project of ``--tasks`` tasks of 20 cells (46-d features, 4 classes: ``bench/synthetic.py``) as
``hali preprocess`` does, the backend connected, so every Submit fires a webhook.

**crowd**: ``--annotators`` non-admin users log in as the UI does and, in parallel threads, each take
``GET /api/projects/<id>/next``, think ``--think-s``, and submit every box of the task with its true class (from the
task's newest prediction, as the UI's Submit does), ``--submits`` times. Then it waits until the backend settles
and reports:

- every label counted once: the labels submitted against the label mirror in Redis (annotations and cell labels),
  the final model's labels (its count and the hash of its label snapshot) and ``/metrics/<project>``;
- retrains coalesced: sampled every 0.1 s, the retrain jobs started at once, the jobs waiting, and the training
  lease's holder; none lost: the final model version's label snapshot is exactly what was submitted;
- ``/webhook`` latency from the backend's gunicorn access log (microseconds per request, as the worker saw it);
- tasks served to two annotators.

**outage**: stops ``--outage-stop`` (default the backend, the workers and Redis), lets one annotator submit
``--outage-submits`` tasks, starts them again, and times until every one of those labels is in a new model version
with no further submit (the workers' reconcile, ``HALI_RECONCILE_S``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from adapters.label_studio import LabelStudioGateway
from adapters.storage import LocalStorage
from bench import benchutil
from bench.annotator import Annotator
from bench.bench_overlap import Server, make_annotators
from bench.crowd_stack import BACKEND_USER, CrowdStack, crowd_stack, webhook_latencies
from bench.synthetic import CLASSES, make_slide
from label_config import TileTask, build_label_config, cells_to_regions, parse_label_set, version_name
from ml_backend.labels.redis_store import RedisLabelStore
from preprocess.layout import DataLayout, write_task_map
from preprocess.tiles.tasks import task_payloads
from scripts import services

CELLS_PER_TASK = 20
QUEUE = "hali"


@dataclass
class Ledger:
    """What the annotators did, shared by their threads."""

    truth: dict[str, str]  # cell id -> its true class
    served: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    submitted: dict[int, list[str]] = field(default_factory=dict)  # annotation id -> cell ids labelled
    submit_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    no_task: int = 0  # `next` answered 404 (no task left for this user) while the project had open tasks
    last_submit_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expected_labels(self) -> dict[str, str]:
        return {c: self.truth[c] for cells in self.submitted.values() for c in cells}


def make_project(stack: CrowdStack, n_tasks: int) -> tuple[int, dict[str, str]]:
    """A project as ``hali preprocess --backend-url`` makes it (tasks with neutral ``hali-v0000`` boxes, the
    backend connected with basic auth and the secret on its webhook); returns its id and each cell's class."""
    slide = make_slide(n_tasks * CELLS_PER_TASK, 46, cells_per_tile=CELLS_PER_TASK, seed=46, slide_id="crowd-slide")
    tables = LocalStorage(stack.root / "data")
    slide.save_cell_table(DataLayout(stack.root / "data", stack.root / "files"))
    gateway = LabelStudioGateway.connect(stack.ls_url, stack.token, timeout_s=600)
    config = build_label_config(CLASSES)
    project = gateway.create_project("HALI crowd", config)
    ids = gateway.import_tasks(project.id, task_payloads(slide.tiles, version_name(0),
                                                         neutral=parse_label_set(config).neutral))
    write_task_map(tables, project.id, slide.slide_id, {t.tile_id: i for t, i in zip(slide.tiles, ids)})
    gateway.serve_version(project.id, version_name(0))
    basic = requests.auth._basic_auth_str(BACKEND_USER, stack.password)
    gateway.connect_backend(project.id, stack.backend_url, auth=(BACKEND_USER, stack.password),
                            webhook_headers={"X-Hali-Secret": stack.secret, "Authorization": basic})
    truth = {c.cell_id: CLASSES[int(y)] for c, y in zip((c for t in slide.tiles for c in t.cells), slide.y)}
    return project.id, truth


def label_task(annotator: Annotator, pid: int, task: dict, ledger: Ledger) -> None:
    """Submit every box of ``task`` with its true class, from its newest prediction (as the UI's Submit)."""
    tile = TileTask.from_task_data(task["data"])
    regions = cells_to_regions(list(tile.cells), tile, [ledger.truth[c.cell_id] for c in tile.cells])
    parent = max((p["id"] for p in task.get("predictions") or []), default=None)
    t0 = time.perf_counter()
    ann = annotator.submit(task["id"], regions, lead_time=5.0, parent_prediction=parent, project_id=pid)
    with ledger.lock:
        ledger.submit_s.append(time.perf_counter() - t0)
        ledger.submitted[ann["id"]] = [c.cell_id for c in tile.cells]
        ledger.last_submit_at = time.monotonic()


def work(annotator: Annotator, pid: int, submits: int, think_s: float, ledger: Ledger, rng: random.Random) -> None:
    """Take, think, submit, ``submits`` times; failed calls go to ``ledger.errors``. A 404 from ``next`` (Label Studio
    found no task for this user) is counted, and the user tries again 2 s later, as one clicks "Label All Tasks"
    again, five times in a row at most."""
    done = tries = in_a_row = 0
    while done < submits and tries < 3 * submits and in_a_row < 5:
        tries += 1
        try:
            task = annotator.next_task(pid)
            with ledger.lock:
                ledger.served[task["id"]].add(annotator.user_id)
            time.sleep(rng.uniform(0.5, 1.5) * think_s)
            label_task(annotator, pid, task, ledger)
            done, in_a_row = done + 1, 0
        except LookupError:
            with ledger.lock:
                ledger.no_task += 1
            in_a_row += 1
            time.sleep(2.0)
        except (RuntimeError, requests.RequestException) as exc:
            with ledger.lock:
                ledger.errors.append(f"{annotator.email}: {exc}"[:300])


class Sampler(threading.Thread):
    """Every 0.1 s: the project's retrain jobs started and waiting in rq, and the training lease's holder."""

    def __init__(self, redis: Redis, pid: int) -> None:
        super().__init__(daemon=True)
        self.redis, self.pid, self.stop = redis, pid, threading.Event()
        self.rows: list[tuple[int, int, bytes | None]] = []

    def run(self) -> None:
        prefix, queue = f"hali-retrain-{self.pid}-", Queue(QUEUE, connection=self.redis)
        started = StartedJobRegistry(QUEUE, connection=self.redis)
        while not self.stop.wait(0.1):
            try:
                running = sum(j.startswith(prefix) for j in started.get_job_ids())
                waiting = sum(j.startswith(prefix) for j in queue.get_job_ids())
                self.rows.append((running, waiting, self.redis.get(f"hali:p:{self.pid}:train-lock")))
            except RedisError:
                continue


def snapshot_hash(labels: dict[str, str]) -> str:
    """The model sidecar's ``label_snapshot`` of ``labels`` (as ``ml_backend.retrain.run._meta`` makes it)."""
    return hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]


def model_state(stack: CrowdStack, store: RedisLabelStore, pid: int) -> dict:
    """The project's last retrain (status), its model's label snapshot, and ``/metrics/<pid>``."""
    status = store.status(pid)
    version = status.get("version", 0)
    sidecar = DataLayout(stack.root / "data", stack.root / "files").models_dir(pid) / f"v{version:04d}.json"
    meta = json.loads(sidecar.read_text()) if version and sidecar.exists() else {}
    metrics = requests.get(f"{stack.backend_url}/metrics/{pid}", auth=(BACKEND_USER, stack.password), timeout=10)
    return {"version": version, "n_labels": status.get("n_labels", 0), "snapshot": meta.get("label_snapshot"),
            "pending": store.pending(pid), "metrics": metrics.json()["summary"] if metrics.ok else {}}


def in_model(state: dict, expected: dict[str, str], above_version: int = 0) -> bool:
    """Whether the served model was trained on exactly ``expected`` and ``/metrics`` counts it."""
    return (state["version"] > above_version and state["snapshot"] == snapshot_hash(expected)
            and state["metrics"].get("labels") == len(expected) and state["metrics"].get("version") == state["version"])


def wait_in_model(stack: CrowdStack, store: RedisLabelStore, pid: int, expected: dict[str, str], timeout_s: float,
                  above_version: int = 0) -> tuple[float | None, dict]:
    """Seconds until :func:`in_model` holds (None on timeout), and the last state seen."""
    start, state = time.monotonic(), {}
    while time.monotonic() - start < timeout_s:
        try:
            state = model_state(stack, store, pid)
        except (requests.RequestException, OSError, RedisError, ValueError) as exc:  # a service still starting
            state = {"error": str(exc)[:200]}
        if "error" not in state and in_model(state, expected, above_version):
            return time.monotonic() - start, state
        time.sleep(0.25)
    return None, state


def wait_idle(redis: Redis, pid: int, timeout_s: float) -> None:
    """Until no retrain of ``pid`` waits, runs, or holds the training lease."""
    prefix, queue = f"hali-retrain-{pid}-", Queue(QUEUE, connection=redis)
    started, deadline = StartedJobRegistry(QUEUE, connection=redis), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = [j for j in [*queue.get_job_ids(), *started.get_job_ids()] if j.startswith(prefix)]
        if not busy and not redis.exists(f"hali:p:{pid}:train-lock", f"hali:p:{pid}:queued"):
            return
        time.sleep(0.5)


def crowd(stack: CrowdStack, pid: int, annotators: list[Annotator], args: argparse.Namespace, ledger: Ledger,
          redis: Redis) -> dict:
    store, offset = RedisLabelStore(redis), stack.access_log.stat().st_size
    version_before = store.status(pid).get("version", 0)
    sampler = Sampler(redis, pid)
    sampler.start()
    threads = [threading.Thread(target=work, args=(a, pid, args.submits, args.think_s, ledger, random.Random(i)))
               for i, a in enumerate(annotators)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    expected = ledger.expected_labels()
    settle_s, state = wait_in_model(stack, store, pid, expected, args.settle_s)
    since_last = None if settle_s is None else time.monotonic() - ledger.last_submit_at
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    ms, codes = webhook_latencies(stack.access_log, offset)
    records = store.records(pid)
    jobs = FinishedJobRegistry(QUEUE, connection=redis).get_job_ids()
    failed = FailedJobRegistry(QUEUE, connection=redis).get_job_ids()
    prefix = f"hali-retrain-{pid}-"
    twice = sum(len(users) > 1 for users in ledger.served.values())
    return {
        "annotators": len(annotators), "submitted": len(ledger.submitted), "errors": len(ledger.errors),
        "first_errors": ledger.errors[:3], "wall_s": round(wall, 1),
        "cell_labels_submitted": sum(len(c) for c in ledger.submitted.values()), "cells_labelled": len(expected),
        "mirror_annotations": len(records), "mirror_cell_labels": sum(len(r.labels) for r in records.values()),
        "mirror_matches": {a: sorted(r.labels) for a, r in records.items()} == {
            a: sorted(c) for a, c in ledger.submitted.items()},
        "model": state, "model_matches": settle_s is not None, "last_submit_to_model_s": since_last,
        "versions": state.get("version", 0) - version_before,
        "retrain_jobs_finished": sum(j.startswith(prefix) for j in jobs),
        "retrain_jobs_failed": sum(j.startswith(prefix) for j in failed),
        "max_jobs_started_at_once": max((r[0] for r in sampler.rows), default=0),
        "max_jobs_waiting": max((r[1] for r in sampler.rows), default=0),
        "lease_holders_seen": len({r[2] for r in sampler.rows if r[2]}), "samples": len(sampler.rows),
        "lease_warnings": sum(stack.worker_log(i).read_text(errors="replace").count("training lease")
                              for i in range(stack.n_workers)),
        "webhooks": codes, "webhook_ms_p50": statistics.median(ms) if ms else None,
        "webhook_ms_p95": benchutil.percentile(ms, 95) if ms else None, "webhook_ms_max": max(ms, default=None),
        "submit_s_p50": statistics.median(ledger.submit_s) if ledger.submit_s else None,
        "submit_s_p95": benchutil.percentile(ledger.submit_s, 95) if ledger.submit_s else None,
        "tasks_served": len(ledger.served), "served_to_2": twice, "next_404": ledger.no_task,
        "dup_pct": 100 * twice / max(1, len(ledger.served)),
    }


def outage(stack: CrowdStack, pid: int, annotator: Annotator, args: argparse.Namespace, ledger: Ledger,
           redis: Redis) -> dict:
    """Stop ``--outage-stop``, submit ``--outage-submits`` tasks, start them again, time until all are in a model."""
    store = RedisLabelStore(redis)
    settled, state = wait_in_model(stack, store, pid, ledger.expected_labels(), args.settle_s)
    wait_idle(redis, pid, args.settle_s)  # a retrain queued by the last submits runs to its end first
    before = model_state(stack, store, pid)["version"]
    names = [n.strip() for n in args.outage_stop.split(",") if n.strip()]
    stack.stop(*names)
    n_before = len(ledger.submitted)
    work(annotator, pid, args.outage_submits, 0.0, ledger, random.Random(99))
    submitted = len(ledger.submitted) - n_before
    expected = ledger.expected_labels()
    t0 = time.monotonic()
    stack.start(*[n for n in ("redis", "backend", "workers") if n in names])
    started_s = time.monotonic() - t0
    ready_s = stack.wait_workers_ready() + started_s if "workers" in names else 0.0
    waited, state = wait_in_model(stack, store, pid, expected, args.settle_s, above_version=before)
    to_model = None if waited is None else time.monotonic() - t0
    return {"stopped": names, "settled_before": settled is not None, "version_before": before,
            "submitted_while_down": submitted, "errors": ledger.errors[-3:] if submitted < args.outage_submits else [],
            "services_started_s": round(started_s, 1), "workers_ready_s": round(ready_s, 1),
            "restart_to_model_s": None if to_model is None else round(to_model, 1), "model": state}


def table(c: dict | None, o: dict | None) -> str:
    """The figures against the issue's targets, as the table in docs/serving.md."""
    rows = []
    if c:
        m, ok = c["model"].get("metrics", {}), c["model_matches"] and c["mirror_matches"]
        rows += [
            ("submits / cell labels", "", f"{c['submitted']:,} / {c['cell_labels_submitted']:,} in {c['wall_s']:.0f} s"),
            ("label mirror: annotations, cell labels", "= submitted",
             (f"{c['mirror_annotations']:,}, {c['mirror_cell_labels']:,} ({'each' if c['mirror_matches'] else 'NOT'} "
             "the same as submitted)")),
            ("final model: labels, snapshot; /metrics labels, annotations", "= submitted",
             (f"{c['model'].get('n_labels', 0):,}, {'equal' if ok else 'DIFFERENT'}; {m.get('labels', 0):,}, "
             f"{m.get('annotations', 0):,}")),
            ("last Submit -> a model trained on every label", "", _s(c["last_submit_to_model_s"])),
            ("model versions / retrain jobs run / failed", "",
             f"{c['versions']} / {c['retrain_jobs_finished']} / {c['retrain_jobs_failed']}"),
            ("retrain jobs started at once / waiting in the queue", "<= 1 training",
             f"{c['max_jobs_started_at_once']} / {c['max_jobs_waiting']}"),
            ("training leases lost", "0", str(c["lease_warnings"])),
            ("/webhook p50 / p95 / max (ms), backend side", "p95 < 20",
             f"{c['webhook_ms_p50']:.1f} / {c['webhook_ms_p95']:.1f} / {c['webhook_ms_max']:.0f} ({c['webhooks']})"),
            ("Submit p50 / p95 (s)", "", f"{c['submit_s_p50']:.1f} / {c['submit_s_p95']:.1f}"),
            ("tasks served to two annotators", "<= 1 %", (f"{c['served_to_2']} of {c['tasks_served']:,} "
                                                         f"({c['dup_pct']:.1f} %)")),
            ("next answered 404 while tasks were open", "", str(c["next_404"])),
        ]
    if o:
        rows.append(((f"outage ({', '.join(o['stopped'])} down for {o['submitted_while_down']} submits): restart -> "
                     "a new version with all of them"), "<= 60 s",
                     (f"{_s(o['restart_to_model_s'])} (services up {o['services_started_s']} s, workers ready "
                     f"{o['workers_ready_s']} s)")))
    return "\n| figure | target | measured |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {v} |" for a, b, v in rows)


def _s(seconds: float | None) -> str:
    return "NOT within --settle-s" if seconds is None else f"{seconds:.1f} s"


def main() -> int:
    args = _parse_args()
    print(benchutil.header("Many annotators, one project; and an outage (full stack)",
                           " ".join(["bench/bench_crowd.py", *sys.argv[1:]])))
    n_tasks = max(args.tasks, args.annotators * args.submits + args.outage_submits + 50)
    root = Path(tempfile.mkdtemp(prefix="hali-crowd-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
    try:
        return _run(root, n_tasks, args)
    except services.StackError as exc:  # PostgreSQL or Label Studio missing, a service that did not start
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, n_tasks: int, args: argparse.Namespace) -> int:
    """The stack under ``root``, the project, the annotators, then the phases; prints the figures."""
    extra = {"HALI_PREDICTIONS_TOP_K": str(args.top_k)} if args.top_k else {}
    with crowd_stack(root, n_workers=args.workers, reconcile_s=args.reconcile_s, extra_env=extra) as stack:
        t0 = time.monotonic()
        pid, truth = make_project(stack, n_tasks)
        print(f"  project {pid}: {n_tasks} tasks of {CELLS_PER_TASK} cells imported, backend connected in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        annotators = make_annotators(Server(stack.ls_url, stack.token, stack.ls_env, stack.ls_bin),
                                     max(1, args.annotators))
        ledger, redis = Ledger(truth), Redis.from_url(stack.redis_url)
        found = {}
        if "crowd" in args.phases:
            found["crowd"] = crowd(stack, pid, annotators, args, ledger, redis)
            print("\ncrowd: " + json.dumps(found["crowd"], default=str), flush=True)
        if "outage" in args.phases:
            found["outage"] = outage(stack, pid, annotators[0], args, ledger, redis)
            print("\noutage: " + json.dumps(found["outage"], default=str), flush=True)
        print(table(found.get("crowd"), found.get("outage")))
    print(benchutil.footer())
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=10, help="annotators working at once (issue: 20)")
    parser.add_argument("--submits", type=int, default=10, help="tasks each submits (issue: 50)")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the project (at least what is submitted)")
    parser.add_argument("--think-s", type=float, default=0.5, help="mean seconds between next and submit")
    parser.add_argument("--top-k", type=int, default=0, help="HALI_PREDICTIONS_TOP_K (0: the default, 100)")
    parser.add_argument("--workers", type=int, default=2, help="hali worker processes")
    parser.add_argument("--reconcile-s", type=float, default=20.0, help="HALI_RECONCILE_S of the workers")
    parser.add_argument("--settle-s", type=float, default=300.0, help="longest wait for labels to reach a model")
    parser.add_argument("--phases", default="crowd,outage", help="crowd, outage, or both")
    parser.add_argument("--outage-stop", default="backend,workers,redis", help="what the outage stops")
    parser.add_argument("--outage-submits", type=int, default=50, help="tasks submitted while it is down")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state dir (logs) for a look")
    args = parser.parse_args()
    unknown = {n.strip() for n in args.outage_stop.split(",")} - {"backend", "workers", "redis"}
    if unknown:
        parser.error(f"--outage-stop {sorted(unknown)}: choose from backend, workers, redis")
    return args


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
