"""A full HALI stack on free loopback ports, as ``make up`` runs it, for the crowd and outage benches.

Not a bench itself. :func:`crowd_stack` starts PostgreSQL, Label Studio on it under gunicorn, redis-server with
its append-only file, ``hali serve`` under gunicorn (basic auth, the webhook secret, an access log whose last
field is each request's microseconds) and ``hali worker`` processes, all from ``scripts/services.py`` and
``scripts/stack.py``; it stops them on exit. :class:`CrowdStack` can stop and start the HALI services again
(the outage). :func:`webhook_latencies` reads `/webhook`'s times from the backend's access log.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scripts import postgres, services
from scripts.stack import hali_argv

ADMIN = "admin@hali.bench"
BACKEND_USER = "hali"
_WEBHOOK_LINE = re.compile(r'"POST /webhook[^"]*" (\d{3}) .* (\d+)$')  # ACCESS_LOG_FORMAT: status ... microseconds


@dataclass
class CrowdStack:
    """The running stack. ``env``: the HALI_* variables every ``hali`` process gets."""

    root: Path
    ls_url: str
    token: str
    ls_env: dict[str, str]  # Label Studio's environment, its database included (manage.py shell)
    ls_bin: Path
    redis_port: int
    backend_port: int
    password: str
    secret: str
    env: dict[str, str]
    n_workers: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _worker_starts: int = 0  # each start writes one "reconciling labels" line to each worker's log

    @property
    def backend_url(self) -> str:
        return f"http://{services.LOOPBACK}:{self.backend_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{services.LOOPBACK}:{self.redis_port}/0"

    @property
    def access_log(self) -> Path:
        return self.root / "logs" / "backend-access.log"

    def worker_log(self, i: int) -> Path:
        return self.root / "logs" / f"worker-{i}.log"

    def start_redis(self) -> None:
        self.procs["redis"] = services.start_redis(self.redis_port, self.root / "redis", persist=True)

    def start_backend(self, wait: bool = True) -> None:
        argv = hali_argv("serve", "--host", services.LOOPBACK, "--port", str(self.backend_port), "--workers", "2",
                         "--threads", "4", "--access-log", str(self.access_log))
        proc = services.spawn(argv, self.root / "logs" / "backend.log", env=self.env, cwd=services.REPO_ROOT,
                              name="hali serve")
        self.procs["backend"] = proc
        if wait:
            services.wait_http(f"{self.backend_url}/health", 120, proc)

    def start_workers(self) -> None:
        for i in range(self.n_workers):
            self.procs[f"worker-{i}"] = services.spawn(hali_argv("worker"), self.worker_log(i), env=self.env,
                                                       cwd=services.REPO_ROOT, name=f"hali worker {i}")

    def wait_workers_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds until every worker's log says its reconcile thread runs (imports and warm-up done)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            logs = [self.worker_log(i).read_text(errors="replace") if self.worker_log(i).exists() else ""
                    for i in range(self.n_workers)]
            if all(log.count("reconciling labels with Label Studio") >= self._worker_starts for log in logs):
                return time.monotonic() - start
            for name, proc in self.procs.items():
                if name.startswith("worker") and proc.poll() is not None:
                    raise services.StackError(services.died_message(proc, "it began to work"))
            time.sleep(0.2)
        raise services.StackError(f"the workers were not ready within {timeout_s:.0f} s")

    def stop(self, *names: str) -> None:
        """Stop the named processes (``backend``, ``workers``, ``redis``) as ``make down`` does (SIGTERM)."""
        for name in names:
            keys = [k for k in self.procs if k.startswith("worker")] if name == "workers" else [name]
            for key in keys:
                proc = self.procs.pop(key, None)
                if proc is not None:
                    services.stop_process(proc)

    def start(self, *names: str) -> None:
        """Start the named processes again (Redis first; the backend and the workers at once, as a supervisor or
        Docker Compose does), returning when Redis answers and the backend's /health does."""
        if "redis" in names:
            self.start_redis()
        if "backend" in names:
            self.start_backend(wait=False)
        if "workers" in names:
            self._worker_starts += 1
            self.start_workers()
        if "backend" in names:
            services.wait_http(f"{self.backend_url}/health", 120, self.procs["backend"])


@contextmanager
def crowd_stack(root: Path, n_workers: int = 2, ls_workers: int = 2, reconcile_s: float = 20.0,
                extra_env: dict[str, str] | None = None) -> Iterator[CrowdStack]:
    """The whole stack under ``root`` (mode 755: the postgres user must reach it); stopped on exit. ``extra_env``:
    more HALI_* settings for the backend and workers."""
    token, ls_password = secrets.token_hex(20), secrets.token_urlsafe(12)
    ls_bin = services.find_label_studio()
    with ExitStack() as stop:
        pg_port, pg_password = services.free_port(), secrets.token_urlsafe(12)
        pg = postgres.start_postgres(postgres.find_postgres(), pg_port, root / "pg" / "data", pg_password)
        stop.callback(postgres.stop_postgres, pg.pid)
        database = postgres.label_studio_db_env(pg_port, pg_password)
        ls_port = services.free_port()
        t0 = time.monotonic()
        ls = services.start_label_studio(ls_port, root / "ls", root / "files", ADMIN, ls_password, token, ls_bin,
                                         database=database, gunicorn_workers=ls_workers)
        stop.callback(services.stop_process, ls)
        print(f"  Label Studio (PostgreSQL, gunicorn {ls_workers}x4) up in {time.monotonic() - t0:.0f} s", flush=True)
        ls_url = f"http://{services.LOOPBACK}:{ls_port}"
        stack = CrowdStack(root=root, ls_url=ls_url, token=token, ls_bin=ls_bin,
                           ls_env=services.label_studio_env(root / "ls", root / "files", "", "", "", database),
                           redis_port=services.free_port(), backend_port=services.free_port(),
                           password=secrets.token_urlsafe(16), secret=secrets.token_urlsafe(16), env={},
                           n_workers=n_workers)
        stack.env = {**os.environ, "HALI_DATA_DIR": str(root / "data"), "HALI_LS_URL": ls_url, "HALI_LS_API_KEY": token,
                     "HALI_LS_FILES_ROOT": str(root / "files"), "HALI_REDIS_URL": stack.redis_url,
                     "HALI_BACKEND_URL": stack.backend_url, "HALI_BACKEND_PASSWORD": stack.password,
                     "HALI_WEBHOOK_SECRET": stack.secret, "HALI_RECONCILE_S": str(reconcile_s),
                     "OMP_NUM_THREADS": "1", "PYTHONPATH": str(services.REPO_ROOT), **(extra_env or {})}
        stop.callback(lambda: stack.stop("workers", "backend", "redis"))
        t0 = time.monotonic()
        stack.start("redis", "backend", "workers")
        stack.wait_workers_ready()
        print(f"  redis, hali serve (gunicorn 2x4) and {n_workers} hali workers up in {time.monotonic() - t0:.0f} s",
              flush=True)
        yield stack


def webhook_latencies(path: Path, offset: int = 0) -> tuple[list[float], dict[str, int]]:
    """Milliseconds of each ``POST /webhook`` in the access log after byte ``offset``; and the status counts."""
    ms, codes = [], defaultdict(int)
    with open(path, "rb") as log:
        log.seek(offset)
        for line in log.read().decode(errors="replace").splitlines():
            if m := _WEBHOOK_LINE.search(line):
                codes[m.group(1)] += 1
                ms.append(int(m.group(2)) / 1000)
    return ms, dict(codes)
