"""A worker SIGKILLed at random points of a retrain: does retraining resume, are versions unique, is nothing left?

    .venv/bin/python bench/bench_kill.py [--kills 20] [--cells 10000] [--seed 0]

A real redis-server, a real Label Studio (SQLite, from the test cache), the backend app (werkzeug, in this
process, with basic auth and the webhook secret on) connected to a synthetic project as ``hali preprocess
--backend-url`` connects it, and a real ``hali worker`` process in a session of its own. Two clean rounds; the
second measures a retrain's duration D (from the training lease appearing in Redis to the new version live). Then
``--kills`` rounds of:

1. an annotator's submit of an open task, every cell labelled (20 labels; Label Studio's webhook -> the backend ->
   a retrain job);
2. when the job holds its training lease (polled every 5 ms), a delay drawn uniformly in [0, D], then ``SIGKILL``
   to the job's work horse and the worker (an out-of-memory kill may take either; the horse alone would leave the
   lease to expire as well, and a dead worker alone lets its orphaned horse finish);
3. a new ``hali worker`` at once (what the supervisor does after its first 1 s back-off);
4. **recovery**: seconds from the kill until a version trained on every label submitted so far is live
   (the backend's last-retrain status names it and Label Studio's project serves it). Target 60 s.

The phase a kill landed in is the clean round's phase at that delay (read, cells, fit, rank, push, switch, prune),
corrected by what the killed run left: a reserved version number (it had passed rank) or its status (it was live). At the end:

- the versions that went live, round after round, must be strictly increasing, and every reserved version
  number must appear once (the ``vNNNN.reserved`` markers and saved models);
- no task may hold two predictions of one version (Label Studio's prediction rows by task and model_version);
- a version reserved by a killed run and never saved must have no prediction rows left once a later run pruned;
- the backend's ``/versions`` must count down from the latest saved version.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.errors import LabelStudioError
from adapters.label_studio import LabelStudioGateway
from adapters.storage import LocalStorage
from bench import benchutil
from bench.bench_scale import _make_project
from bench.live_retrain import _start_label_studio
from bench.synthetic import CLASSES, make_slide
from label_config import TileTask, cell_to_region, parse_version_name, version_name
from preprocess.layout import DataLayout
from scripts import services

RECOVERY_TARGET_S = 60.0
GIVE_UP_S = 180.0  # a round that has not recovered by then is a stall
PHASES = ("read", "cells", "fit", "rank", "push", "switch", "prune")
USER, PASSWORD, SECRET = "hali", "bench-kill-pw", "bench-kill-secret"


def main() -> int:
    args = _parse_args()
    print(benchutil.header("Worker SIGKILLed at random points of a retrain",
                           " ".join(["bench/bench_kill.py", *sys.argv[1:]])), flush=True)
    with tempfile.TemporaryDirectory(prefix="hali-kill-") as tmp, _stack(Path(tmp), args.cells) as stack:
        ok = _run(stack, args.kills, random.Random(args.seed))
    print(benchutil.footer())
    return 0 if ok else 1


class Stack:
    """The running services and the project: where everything is, and the worker to kill."""

    def __init__(self, root: Path, env: dict[str, str], gateway: LabelStudioGateway, project_id: int,
                 backend_url: str, open_tasks: list[int], redis: Any) -> None:
        self.root, self.env, self.gateway, self.project_id = root, env, gateway, project_id
        self.backend_url, self.open_tasks, self.redis = backend_url, open_tasks, redis
        self.models = DataLayout(Path(env["HALI_DATA_DIR"]), Path(env["HALI_LS_FILES_ROOT"])).models_dir(project_id)
        self.worker: subprocess.Popen | None = None
        self.n_workers, self.submitted = 0, 0

    def start_worker(self) -> None:
        self.n_workers += 1
        log = self.root / f"worker-{self.n_workers}.log"
        cmd = [os.environ.get("HALI_PYTHON", sys.executable), "-m", "ml_backend.cli", "worker", "--queues", "hali"]
        self.worker = subprocess.Popen(cmd, env={**os.environ, **self.env}, cwd=ROOT, stdout=log.open("w"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.worker_up_s = float("nan")
        threading.Thread(target=self._time_start, args=(log, time.monotonic()), daemon=True).start()

    def _time_start(self, log: Path, started: float) -> None:
        """Seconds from the worker's start to its 'listening' line (it imports torch and warms up first)."""
        deadline = started + GIVE_UP_S
        while time.monotonic() < deadline:
            if log.exists() and "listening on queues" in log.read_text(errors="replace"):
                self.worker_up_s = time.monotonic() - started
                return
            time.sleep(0.05)

    def kill_worker(self) -> None:
        """SIGKILL, with no cleanup, to the job's work horse (rq forks it into a process group of its own, so it
        would otherwise finish the retrain as an orphan) and to the worker's process group."""
        children = Path(f"/proc/{self.worker.pid}/task/{self.worker.pid}/children")
        for pid in (children.read_text().split() if children.exists() else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def status(self) -> dict[str, Any]:
        r = requests.get(f"{self.backend_url}/status/{self.project_id}", auth=(USER, PASSWORD), timeout=10)
        r.raise_for_status()
        return r.json()["last_retrain"] or {}

    def live_version(self) -> str | None:
        return self.gateway.get_project(self.project_id).model_version

    def lease_held(self) -> bool:
        return bool(self.redis.exists(f"hali:p:{self.project_id}:train-lock"))


@contextmanager
def _stack(root: Path, n_cells: int) -> Iterator[Stack]:
    from redis import Redis

    redis_port = services.free_port()
    redis_proc = services.start_redis(redis_port, root / "redis")
    ls_proc, ls_url, token, ls_s = _start_label_studio(root)
    print(f"Label Studio (SQLite) up in {ls_s:.0f} s", flush=True)
    env = {"HALI_DATA_DIR": str(root / "data"), "HALI_LS_FILES_ROOT": str(root / "ls-files"), "HALI_LS_URL": ls_url,
           "HALI_LS_API_KEY": token, "HALI_REDIS_URL": f"redis://{services.LOOPBACK}:{redis_port}/0",
           "HALI_QUEUE_NAME": "hali", "HALI_BACKEND_USER": USER, "HALI_BACKEND_PASSWORD": PASSWORD,
           "HALI_WEBHOOK_SECRET": SECRET, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    os.environ.update(env)
    stack = None
    try:
        with _backend() as backend_url:
            gateway = LabelStudioGateway.connect(ls_url, token, timeout_s=600)
            slide = make_slide(n_cells, 46, cells_per_tile=20, seed=46)
            slide.save_cell_table(DataLayout(root / "data", root / "ls-files"))
            project_id = _make_project(gateway, slide, 0, LocalStorage(root / "data"))
            headers = {"X-Hali-Secret": SECRET, "Authorization": requests.auth._basic_auth_str(USER, PASSWORD)}
            gateway.connect_backend(project_id, backend_url, auth=(USER, PASSWORD), webhook_headers=headers)
            open_tasks = sorted(gateway.task_ids_by_key(project_id, "tile_id").values())
            stack = Stack(root, env, gateway, project_id, backend_url, open_tasks, Redis(port=redis_port))
            stack.start_worker()
            yield stack
    finally:
        if stack is not None and stack.worker is not None and stack.worker.poll() is None:
            stack.kill_worker()
        logs = ROOT / ".state" / "bench-kill-logs"  # the workers' logs outlive the temporary dir
        logs.mkdir(parents=True, exist_ok=True)
        for log in root.glob("worker-*.log"):
            shutil.copy(log, logs / log.name)
        services.stop_process(ls_proc)
        services.stop_process(redis_proc)


@contextmanager
def _backend() -> Iterator[str]:
    """The backend app (real Redis, real settings from HALI_*) on a free loopback port, in a thread."""
    import logging

    from werkzeug.serving import make_server

    from ml_backend.http.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    server = make_server(services.LOOPBACK, 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{services.LOOPBACK}:{server.server_port}"
    finally:
        server.shutdown()


def _run(stack: Stack, kills: int, rng: random.Random) -> bool:
    live_seen = _watch_live(stack)
    for _ in range(2):  # the first retrain reads every task (a full reconcile): the second is a typical one
        labels = _submit(stack, rng)
        clean = _wait_lease(stack)
        status = _wait_recovered(stack, labels, clean)
        duration = time.monotonic() - clean
    laps = status["metrics"]["seconds_by_phase"]
    print(f"\nclean retrain (the second): {duration:.2f} s from the lease to live ({', '.join(f'{k} {laps[k]:.2f}' for k in PHASES if k in laps)})")
    print(f"project {stack.project_id}: {len(stack.open_tasks) + 1} tasks of 20 cells; {kills} kills, delay uniform "
          f"in [0, {duration:.2f}] s after the training lease appears; recovery target {RECOVERY_TARGET_S:.0f} s\n")
    print("| # | labels | delay s | phase (approx.) | worker up s | recovered s | live after | versions reserved |")
    print("|---:|---:|---:|---|---:|---:|---|---|")
    rows = []
    for i in range(1, kills + 1):
        rows.append(_kill_round(stack, rng, i, duration, laps))
        print(_row(rows[-1]), flush=True)
    live_seen.set()
    return _summary(stack, rows, live_seen.versions)


def _kill_round(stack: Stack, rng: random.Random, i: int, duration: float, laps: dict[str, float]) -> dict[str, Any]:
    reserved_before = _reserved(stack)
    labels = _submit(stack, rng)
    _wait_lease(stack)
    delay = rng.uniform(0.0, duration)
    time.sleep(delay)
    stack.kill_worker()
    killed_at = time.monotonic()
    stack.start_worker()
    phase = _phase_killed(stack, labels, reserved_before, _phase_at(delay, laps, duration))
    try:
        status = _wait_recovered(stack, labels, killed_at)
        recovered = time.monotonic() - killed_at
    except TimeoutError:
        status, recovered = {}, float("inf")
    _poll("the new worker's start", lambda: stack.worker_up_s == stack.worker_up_s, GIVE_UP_S, every_s=0.2)
    return {"i": i, "labels": labels, "delay": delay, "phase": phase,
            "worker_up": stack.worker_up_s, "recovered": recovered, "live": status.get("model_version", "-"),
            "reserved": sorted(set(_reserved(stack)) - set(reserved_before))}


def _submit(stack: Stack, rng: random.Random) -> int:
    """Every cell of the next open task labelled (a class each), as the UI's Submit; returns the cell labels
    submitted so far (a box left out would count too: as "Not a nucleus")."""
    task_id = stack.open_tasks.pop(0)
    tile = TileTask.from_task_data(stack.gateway._client.tasks.get(id=task_id).data)
    result = [cell_to_region(cell, tile, rng.choice(CLASSES)) for cell in tile.cells]
    stack.gateway._client.annotations.create(id=task_id, result=result, lead_time=10.0)
    stack.submitted += len(result)
    return stack.submitted


def _wait_lease(stack: Stack) -> float:
    return _poll("the retrain's training lease", stack.lease_held, 120.0, every_s=0.005) and time.monotonic()


def _wait_recovered(stack: Stack, labels: int, since: float) -> dict[str, Any]:
    """The backend's last-retrain status once a version trained on ``labels`` labels is live in Label Studio."""
    def done() -> dict[str, Any] | None:
        try:
            status = stack.status()
            ok = status.get("n_labels", 0) >= labels and status.get("model_version") == stack.live_version()
        except (LabelStudioError, requests.RequestException):  # a connection reset under load: poll again
            return None
        return status if ok else None

    return _poll(f"a live version with {labels} labels", done, GIVE_UP_S - (time.monotonic() - since), every_s=0.1)


def _poll(what: str, check: Callable[[], Any], timeout_s: float, every_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


class _LiveWatch(threading.Event):
    versions: list[str]


def _watch_live(stack: Stack) -> _LiveWatch:
    """Every model version the project serves, in the order first seen (polled every 0.2 s until set)."""
    stop = _LiveWatch()
    stop.versions = []
    gateway = LabelStudioGateway.connect(stack.gateway.url, os.environ["HALI_LS_API_KEY"])

    def watch() -> None:
        while not stop.wait(0.2):
            try:
                name = gateway.get_project(stack.project_id).model_version
            except LabelStudioError:  # the development server resets a connection now and then under load
                continue
            if name and (not stop.versions or stop.versions[-1] != name):
                stop.versions.append(name)

    threading.Thread(target=watch, daemon=True).start()
    return stop


def _reserved(stack: Stack) -> list[int]:
    """Every version number a run took: reservation markers left by killed runs, and saved models."""
    found = set()
    for path in stack.models.glob("v*.*"):
        if path.suffix in (".reserved", ".json"):
            found.add(int(path.name[1:].split(".")[0]))
    return sorted(found)


def _phase_killed(stack: Stack, labels: int, reserved_before: list[int], by_timing: str) -> str:
    """The phase the run was killed in: the clean run's phase at that delay, corrected by what the run left (a
    new version number is reserved after rank, before push; the status is written once the version is live)."""
    if stack.status().get("n_labels", 0) >= labels:
        return "after live (status, dashboard)"
    if set(_reserved(stack)) - set(reserved_before):
        return by_timing if by_timing in ("push", "switch", "prune") else "push"
    return by_timing if by_timing in ("read", "cells", "fit", "rank") else "rank"


def _phase_at(delay: float, laps: dict[str, float], duration: float) -> str:
    """The clean run's phase at ``delay`` seconds after its lease appeared; the rest of D is rq and waiting."""
    t = 0.0
    for phase in PHASES:
        t += laps.get(phase, 0.0)
        if delay < t:
            return phase
    return "after prune (status, dashboard)" if delay < duration else "-"


def _row(r: dict[str, Any]) -> str:
    recovered = "**STALL**" if r["recovered"] == float("inf") else f"{r['recovered']:.1f}"
    return (f"| {r['i']} | {r['labels']} | {r['delay']:.2f} | {r['phase']} | {r['worker_up']:.1f} | {recovered} | "
            f"{r['live']} | {', '.join(version_name(v) for v in r['reserved'])} |")


def _summary(stack: Stack, rows: list[dict[str, Any]], live_seen: list[str]) -> bool:
    gateway, pid = stack.gateway, stack.project_id
    recovered = [r["recovered"] for r in rows]
    stalls = sum(r == float("inf") for r in recovered)
    finite = [r for r in recovered if r != float("inf")]
    live_numbers = [parse_version_name(n) for n in live_seen]
    increasing = all(b > a for a, b in itertools.pairwise(live_numbers))
    reserved = _reserved(stack)
    never_saved = sorted(int(p.name[1:5]) for p in stack.models.glob("v*.reserved"))
    rows_by_version = gateway.model_versions(pid)
    left_behind = {version_name(v): rows_by_version.get(version_name(v), 0) for v in never_saved}
    never_live = {n: k for n, k in rows_by_version.items() if n not in live_seen and k}
    dup_tasks = _tasks_with_two_predictions_of_one_version(stack)
    saved = sorted(int(p.name[1:5]) for p in stack.models.glob("v*.json"))
    listed = requests.get(f"{stack.backend_url}/versions", params={"project": pid}, auth=(USER, PASSWORD),
                          timeout=10).json()["versions"]
    listed_ok = listed == [version_name(v) for v in range(max(saved, default=0), -1, -1)]
    median, worst = (statistics.median(finite), max(finite)) if finite else (float("nan"), float("nan"))
    print(f"\nrecovery (kill -> every label in a live version): median {median:.1f} s, "
          f"max {worst:.1f} s over {len(finite)} recovered kills; {stalls} stalls (> {GIVE_UP_S:.0f} s); "
          f"over {RECOVERY_TARGET_S:.0f} s: {sum(r > RECOVERY_TARGET_S for r in recovered)}")
    print(f"versions live, in order: {' '.join(live_seen)} -> strictly increasing: {increasing}")
    print(f"version numbers taken: {len(reserved)} ({reserved[0] if reserved else '-'}..{reserved[-1] if reserved else '-'}), "
          f"each once (reservation is exclusive); saved {len(saved)}; reserved by a killed run and never saved "
          f"{len(never_saved)}: prediction rows left {sum(left_behind.values())} {left_behind or ''}")
    print(f"versions never live that still hold prediction rows (a run killed after its save): {never_live or 0}")
    print(f"tasks holding two predictions of one version: {dup_tasks}")
    print(f"Label Studio's prediction rows by version: {dict(sorted(rows_by_version.items()))}")
    print(f"backend /versions counts down from the latest saved version: {listed_ok} ({listed[:3]}...)")
    return stalls == 0 and max(recovered) <= RECOVERY_TARGET_S and increasing and not dup_tasks \
        and not sum(left_behind.values()) and not never_live and listed_ok


def _tasks_with_two_predictions_of_one_version(stack: Stack) -> int:
    counts = Counter((p.task, p.model_version) for p in stack.gateway._client.predictions.list(project=stack.project_id))
    return len({task for (task, _), n in counts.items() if n > 1})


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="rounds of label, kill, restart")
    parser.add_argument("--cells", type=int, default=10000, help="cells of the synthetic project (20 per task)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
