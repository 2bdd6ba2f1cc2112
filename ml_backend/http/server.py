"""Serving the backend with gunicorn: several worker processes, each with its own Flask app, instead of
Flask's single-process development server (which warns it is not for production).

    serve_gunicorn(settings, host="127.0.0.1", port=9090, workers=2, threads=4)   # blocks; SIGTERM stops it

The app is built in every worker after the fork (no shared Redis sockets), from ``settings`` that were
validated once in the parent, so a bad ``HALI_*`` value stops the command before any worker starts. Basic
auth, the webhook secret and the body-size limit (``HALI_MAX_BODY_MB``, 413) are the Flask app's own, so they
hold under either server.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from ml_backend.http.app import create_app
from ml_backend.settings import BackendSettings

# Label Studio waits up to 100 s for /predict; a worker silent for longer than this is restarted.
WORKER_TIMEOUT_S = 120


class _BackendApplication(BaseApplication):
    """gunicorn's embedding API: options from a dict, the WSGI app from ``create_app`` (no sys.argv parsing)."""

    def __init__(self, settings: BackendSettings, options: dict[str, Any]) -> None:
        self._settings, self._options = settings, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self):
        return create_app(self._settings)


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    """The gunicorn settings ``hali serve`` uses: ``workers`` processes of ``threads`` threads each."""
    if workers < 1 or threads < 1:
        raise ValueError(f"--workers and --threads must be at least 1, got {workers} and {threads}")
    return {"bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
            "timeout": WORKER_TIMEOUT_S, "graceful_timeout": 10, "accesslog": None, "errorlog": "-",
            "proc_name": "hali-serve", "control_socket_disable": True,  # one per user by default: shared
            "worker_exit": exit_worker_now}


def exit_worker_now(arbiter: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: end a worker process at once, with the exit status it was leaving with.

    A worker that had stopped serving spent its whole graceful timeout (10 s) in the interpreter's final
    garbage collection (torch's and scikit-learn's objects; seen in gdb, 2026-12-01), so every ``make down``
    and restart waited for gunicorn to SIGKILL it. Nothing is left to flush but the standard streams. The master
    calls this hook too, for a worker that is already gone: there it does nothing.
    """
    if os.getpid() != worker.pid:
        return
    leaving = sys.exc_info()[1]
    code = leaving.code if isinstance(leaving, SystemExit) else 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def serve_gunicorn(settings: BackendSettings, host: str, port: int, workers: int = 2, threads: int = 4) -> int:
    """Run the backend under gunicorn until it is stopped; returns gunicorn's exit status."""
    try:
        _BackendApplication(settings, gunicorn_options(host, port, workers, threads)).run()
    except SystemExit as done:  # the arbiter exits the process when it halts
        return int(done.code or 0)
    return 0
