"""The ``hali`` command: preprocess slides, serve the ML backend, run workers.

Every subcommand builds its settings once from ``HALI_*`` environment variables and its flags, and turns
the project's own errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import NoReturn

from pydantic import ValidationError

from adapters.errors import AdapterError
from adapters.settings import describe_validation_error
from label_config import LabelConfigError
from ml_backend.classify import cli as classify_cli
from ml_backend.errors import BackendError
from ml_backend.export import cli as export_cli
from ml_backend.http.app import create_app
from ml_backend.http.server import serve_gunicorn
from ml_backend.labels import cli as labels_cli
from ml_backend.retrain.job import retrain_job
from ml_backend.settings import BackendSettings
from ml_backend.simulation import cli as simulation_cli
from ml_backend.worker import run_worker
from preprocess import cli as preprocess_cli
from preprocess.errors import PreprocessError

log = logging.getLogger("hali")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call drowns the progress
    try:
        return args.func(args)
    except (PreprocessError, AdapterError, LabelConfigError, BackendError) as exc:
        print(f"hali {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings are built at start-up: a bad HALI_* value stops here
        print(f"hali {args.command}: error: {one_line(describe_validation_error(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def one_line(message: str) -> str:
    """``message`` on one line: a library's multi-line text (torch's, with terminal colours) folded in."""
    return " ".join(_ANSI_ESCAPE.sub("", message).split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hali", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    preprocess_cli.add_commands(sub)

    s = sub.add_parser("serve", help="run the ML backend (Flask under gunicorn) that Label Studio calls")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    s.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    s.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn "
                                                      "(one process; for debugging)")
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="run an rq worker for retrain and preprocessing jobs")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.add_argument("--queues", help="comma-separated queue names; default HALI_QUEUE_NAME,HALI_PREPROCESS_QUEUE_NAME "
                                    "(hali,hali-preprocess)")
    w.set_defaults(func=_worker)

    r = sub.add_parser("retrain", help="retrain one project now, in this process")
    r.add_argument("project_id", type=int)
    r.set_defaults(func=_retrain)
    simulation_cli.add_commands(sub)
    export_cli.add_commands(sub)
    classify_cli.add_commands(sub)
    labels_cli.add_commands(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    settings = BackendSettings()
    if args.dev:
        create_app(settings).run(host=args.host, port=args.port, threaded=True)
        return 0
    if args.workers < 1 or args.threads < 1:
        print(f"hali serve: error: --workers and --threads must be at least 1, got {args.workers} and "
              f"{args.threads}", file=sys.stderr)
        return 2
    _leave(serve_gunicorn(settings, args.host, args.port, args.workers, args.threads))  # gunicorn has stopped


def _worker(args: argparse.Namespace) -> int:
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    code = run_worker(BackendSettings(), burst=args.burst, queues=queues)
    _leave(code)


def _leave(code: int) -> NoReturn:
    """End a long-running command whose work is done: skip the interpreter's final garbage collection of
    torch's and scikit-learn's objects, which took 5 s under load on every stop and restart (2026-12-01)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _retrain(args: argparse.Namespace) -> int:
    print(json.dumps(retrain_job(args.project_id), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
