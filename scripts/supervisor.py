"""Keep the backend and the rq worker of ``make up`` running: restart either when it dies, with backoff.

Stdlib only. ``python scripts/stack.py supervise`` runs :meth:`Supervisor.run` in a process of its own
(pid file ``supervisor``), which ``make up`` starts after the services and ``make down`` stops first.

Each service is known by its pid file, so the supervisor adopts what ``up`` started and ``status`` always
shows the live pid. A service whose pid is gone is started again after a delay that doubles with each
restart in a row (1, 2, 4 ... 60 s) and falls back to 1 s once it has run for ``STABLE_S``. Restarts are
counted in ``supervisor.json`` next to the pid files::

    {"worker": {"restarts": 2, "last_restart": "2026-12-01T03:02:11Z", "last_error": null}}
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from scripts.services import StackError

MAX_DELAY_S = 60.0
STABLE_S = 60.0  # a service up this long counts as healthy again: the next restart waits 1 s


@dataclass
class _Watch:
    """What the supervisor knows of one service."""

    seen: bool = False  # it ran once under our watch: a start from now on is a restart
    restarts: int = 0
    in_a_row: int = 0  # restarts since it last ran STABLE_S
    next_start: float = 0.0  # monotonic time before which it is not started again
    up_since: float | None = None
    last_restart: str | None = None
    last_error: str | None = None
    children: list[subprocess.Popen] = field(default_factory=list)  # ours: reaped so they leave no zombie


class Supervisor:
    """Restarts services that died.

    ``read_pid(name) -> int | None`` gives a service's live pid (from its pid file); ``starters[name]() ->
    Popen`` starts it and returns once it answers; ``write_pid(name, pid)`` records the new pid;
    ``record_path`` is where the restart counts go.
    """

    def __init__(self, starters: Mapping[str, Callable[[], subprocess.Popen]],
                 read_pid: Callable[[str], int | None], write_pid: Callable[[str, int], None],
                 record_path: Path, log: Callable[[str], None] = print) -> None:
        self.starters, self.read_pid, self.write_pid = dict(starters), read_pid, write_pid
        self.record_path, self.log = Path(record_path), log
        self.watches = {name: _Watch() for name in self.starters}
        self._stopping = False

    def run(self, poll_s: float = 1.0) -> int:
        """Check every ``poll_s`` until SIGTERM or SIGINT; returns 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.log(f"supervising {', '.join(self.starters)}")
        self._save()
        while not self._stopping:
            self.check_once()
            time.sleep(poll_s)
        self.log("supervisor stopped (the services keep running until `make down` stops them)")
        return 0

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def check_once(self) -> None:
        """Restart every service whose pid is gone and whose backoff has passed."""
        now = time.monotonic()
        for name, watch in self.watches.items():
            watch.children = [c for c in watch.children if c.poll() is None]
            if self.read_pid(name) is not None:
                watch.seen, watch.up_since = True, watch.up_since or now
                if now - watch.up_since >= STABLE_S:
                    watch.in_a_row = 0
                continue
            if watch.up_since is not None:  # it was up and is gone
                self.log(f"{name} is not running; restarting it")
                watch.up_since, watch.next_start = None, now + self.delay(watch.in_a_row)
            if now >= watch.next_start and not self._stopping:
                self._restart(name, watch)

    @staticmethod
    def delay(in_a_row: int) -> float:
        """Seconds to wait before a restart, after ``in_a_row`` restarts without a stable run."""
        return min(MAX_DELAY_S, 2.0 ** in_a_row)

    def _restart(self, name: str, watch: _Watch) -> None:
        watch.in_a_row += 1
        if watch.seen:
            watch.restarts += 1
            watch.last_restart = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            proc = self.starters[name]()
        except (StackError, OSError) as exc:
            watch.last_error = " ".join(str(exc).split())[:500]
            watch.next_start = time.monotonic() + self.delay(watch.in_a_row)
            self.log(f"{name} did not start ({watch.last_error}); next try in "
                     f"{self.delay(watch.in_a_row):.0f} s")
        else:
            watch.children.append(proc)
            watch.last_error, watch.up_since = None, time.monotonic()
            self.write_pid(name, proc.pid)
            self.log(f"{name} {'restarted' if watch.seen else 'started'} (pid {proc.pid}, restarts {watch.restarts})")
            watch.seen = True
        self._save()

    def _save(self) -> None:
        record = {name: {"restarts": w.restarts, "last_restart": w.last_restart, "last_error": w.last_error}
                  for name, w in self.watches.items()}
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(self.record_path)


def read_record(path: Path) -> dict[str, dict]:
    """What :class:`Supervisor` last wrote, or {} when it never ran."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def log_line(message: str) -> None:
    """A timestamped line on stdout (the supervisor's log file)."""
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} {message}", file=sys.stdout, flush=True)
