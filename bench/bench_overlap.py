"""Double work: how many tasks Label Studio serves to two annotators at once, per database and server.

For each configuration this starts a fresh Label Studio on a free loopback port (plain Label Studio: no
backend, so the figure is Label Studio's own), imports ``annotators x submits`` tasks, makes that many
non-admin users, logs them in as the UI does (session + CSRF), and lets them work in parallel threads: each
takes ``GET /api/projects/<id>/next``, waits a random think time, submits, and takes the next, until it has
submitted ``submits`` tasks or the project has none left. A task *served twice* went to more than one
annotator; the *double work* is the annotations beyond the first on a task (Label Studio's default
``maximum_annotations`` is 1, so each is wasted).

Configurations: ``sqlite-dev`` (Label Studio's SQLite and Django's development server: ``HALI_LS_DB=sqlite``),
``postgres-gunicorn`` (``make up``'s default), ``postgres-dev``.

    .venv/bin/python bench/bench_overlap.py [--annotators 10,20] [--submits 10] [--configs sqlite-dev,postgres-gunicorn]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.annotator import Annotator, login  # noqa: E402
from bench.benchutil import footer, header, percentile  # noqa: E402
from scripts import postgres, services  # noqa: E402

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="choice" toName="image"><Choice value="A"/><Choice value="B"/></Choices></View>"""
ADMIN = "admin@hali.bench"
CONFIGS = ("sqlite-dev", "postgres-gunicorn", "postgres-dev")


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    env: dict[str, str]  # Label Studio's environment (its database included), for manage.py
    ls_bin: Path


@contextmanager
def label_studio(config: str, root: Path) -> Iterator[Server]:
    """A fresh Label Studio for ``config`` under ``root``; stopped (with its PostgreSQL) on exit."""
    token, password = secrets.token_hex(20), secrets.token_urlsafe(12)
    ls_bin = services.find_label_studio()
    with ExitStack() as stop:
        database, workers = None, 0
        if config.startswith("postgres"):
            pg_port, pg_password = services.free_port(), secrets.token_urlsafe(12)
            pg = postgres.start_postgres(postgres.find_postgres(), pg_port, root / "pg" / "data", pg_password)
            stop.callback(postgres.stop_postgres, pg.pid)
            database = postgres.label_studio_db_env(pg_port, pg_password)
            workers = 3 if config.endswith("gunicorn") else 0
        port = services.free_port()
        t0 = time.monotonic()
        proc = services.start_label_studio(port, root / "ls", root / "files", ADMIN, password, token, ls_bin,
                                           database=database, gunicorn_workers=workers)
        stop.callback(services.stop_process, proc)
        print(f"  {config}: Label Studio up in {time.monotonic() - t0:.0f} s (cold: every migration)", flush=True)
        env = services.label_studio_env(root / "ls", root / "files", "", "", "", database)
        yield Server(f"http://{services.LOOPBACK}:{port}", token, env, ls_bin)


def make_project(server: Server, n_tasks: int) -> int:
    api = requests.Session()
    api.trust_env = False
    api.headers["Authorization"] = f"Token {server.token}"
    project = api.post(f"{server.url}/api/projects/", json={"title": "overlap", "label_config": CONFIG,
                                                            "sampling": "Sequential sampling"}, timeout=60)
    project.raise_for_status()
    pid = project.json()["id"]
    tasks = [{"data": {"image": f"/static/images/tile-{i}.png"}} for i in range(n_tasks)]
    api.post(f"{server.url}/api/projects/{pid}/import", json=tasks, timeout=120).raise_for_status()
    return pid


def make_annotators(server: Server, n: int) -> list[Annotator]:
    """``n`` users made through the API, their passwords set in one ``manage.py shell`` (not one
    ``label-studio reset_password`` start each), then logged in as a browser."""
    tag = secrets.token_hex(3)  # each measurement on one server makes new users
    emails = [f"annotator{i}-{tag}@hali.bench" for i in range(n)]
    ids = []
    for email in emails:
        made = requests.post(f"{server.url}/api/users/", headers={"Authorization": f"Token {server.token}"},
                             json={"email": email, "username": email}, timeout=60)
        made.raise_for_status()
        ids.append(made.json()["id"])
    password = secrets.token_urlsafe(12)
    code = ("from users.models import User\n"
            f"for u in User.objects.filter(email__in={emails!r}):\n"
            f"    u.set_password({password!r}); u.save()\n")
    python = server.ls_bin.parent / "python"
    where = "import label_studio, os; print(os.path.dirname(label_studio.__file__))"
    package = subprocess.run([str(python), "-c", where], capture_output=True, text=True, check=True).stdout.strip()
    env = {**server.env, "DJANGO_SETTINGS_MODULE": "core.settings.label_studio"}
    subprocess.run([str(python), "manage.py", "shell", "-c", code], cwd=package, env=env, check=True,
                   capture_output=True, timeout=300)
    return [Annotator(url=server.url, email=e, user_id=i, session=login(server.url, e, password))
            for e, i in zip(emails, ids)]


def work(annotator: Annotator, pid: int, submits: int, think_s: float, served: dict, latencies: list,
         errors: list, lock: threading.Lock, rng: random.Random) -> None:
    """Take, think, submit, ``submits`` times (or until Label Studio has no task left for this user). A
    failed call (SQLite's "database is locked" is a 500) is counted in ``errors`` and the annotator goes on."""
    done = tries = 0
    while done < submits and tries < 3 * submits:
        tries += 1
        t0 = time.perf_counter()
        try:
            task = annotator.next_task(pid)
        except LookupError:
            return
        except requests.RequestException as exc:
            with lock:
                errors.append(f"next: {exc}"[:200])
            continue
        with lock:
            latencies.append(time.perf_counter() - t0)
            served[task["id"]].add(annotator.user_id)
        time.sleep(rng.uniform(0.5, 1.5) * think_s)
        result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["A"]}}]
        try:
            annotator.submit(task["id"], result, lead_time=think_s, project_id=pid)
            done += 1
        except (RuntimeError, requests.RequestException) as exc:
            with lock:
                errors.append(f"submit: {exc}"[:200])


def measure(server: Server, n_annotators: int, submits: int, think_s: float, seed: int) -> dict:
    pid = make_project(server, n_annotators * submits)
    annotators = make_annotators(server, n_annotators)
    served: dict[int, set[int]] = defaultdict(set)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=work, args=(a, pid, submits, think_s, served, latencies, errors, lock,
                                                   random.Random(seed + i)))
               for i, a in enumerate(annotators)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    annotations = requests.get(f"{server.url}/api/projects/{pid}/", timeout=60,
                               headers={"Authorization": f"Token {server.token}"}).json()["total_annotations_number"]
    twice = sum(len(users) > 1 for users in served.values())
    return {"serves": len(latencies), "tasks": len(served), "twice": twice, "annotations": annotations,
            "extra": annotations - len(served), "errors": len(errors), "first_error": errors[:1], "wall": wall,
            "p50": statistics.median(latencies), "p95": percentile(latencies, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", default="10,20", help="comma-separated annotator counts")
    parser.add_argument("--submits", type=int, default=10, help="tasks each annotator submits")
    parser.add_argument("--think-s", type=float, default=0.3, help="mean seconds between next and submit")
    parser.add_argument("--configs", default="sqlite-dev,postgres-gunicorn", help=f"any of {', '.join(CONFIGS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown --configs {sorted(unknown)}: choose from {', '.join(CONFIGS)}")
    print(header("Tasks served to two annotators at once (plain Label Studio 1.23.2)", " ".join(sys.argv)))
    rows = []
    for config in configs:
        root = Path(tempfile.mkdtemp(prefix="hali-overlap-"))
        root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
        try:
            with label_studio(config, root) as server:
                for n in (int(x) for x in args.annotators.split(",")):
                    row = measure(server, n, args.submits, args.think_s, args.seed)
                    rows.append((config, n, row))
                    print(f"  {config} {n} annotators: {row}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| configuration | annotators | serves | tasks served | served to >1 | extra annotations | "
          "HTTP errors | next p50 / p95 (s) | wall (s) |\n|---|---|---|---|---|---|---|---|---|")
    for config, n, r in rows:
        print(f"| {config} | {n} | {r['serves']} | {r['tasks']} | {r['twice']} ({100 * r['twice'] / r['tasks']:.1f} %) "
              f"| {r['extra']} | {r['errors']} | {r['p50']:.2f} / {r['p95']:.2f} | {r['wall']:.0f} |")
    print(footer())


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
