"""The ``hali`` command: preprocess slides, serve the ML backend, run workers.

Every subcommand builds its settings once from ``HALI_*`` environment variables and its flags, and turns
the project's own errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from label_config import LabelConfigError
from ml_backend.errors import BackendError
from preprocess.errors import PreprocessError

log = logging.getLogger("hali")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call drowns the progress
    try:
        return args.func(args)
    except (PreprocessError, LabelConfigError, BackendError) as exc:
        print(f"hali {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hali", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preprocess", help="segment a slide and push its tiles into a Label Studio project")
    p.add_argument("slide", type=Path, help="whole-slide image (SVS, NDPI, MRXS, TIFF, ...) or a PNG/JPEG/TIFF")
    p.add_argument("--project", required=True, help="Label Studio project title (created when missing)")
    p.add_argument("--classes", help="comma-separated cell classes, e.g. Tumor,Lymphocyte,Stroma,Other")
    p.add_argument("--cells-per-task", type=int, help="cells per task (tile); default 20")
    p.add_argument("--mpp", type=float, help="microns per pixel, for slides that do not record it")
    p.add_argument("--checkpoint", type=Path, help="ResNet-18 backbone weights (a state_dict .pt file)")
    p.add_argument("--backend-url", help="URL Label Studio uses to reach `hali serve` (connects the backend)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_preprocess)

    s = sub.add_parser("serve", help="run the ML backend (Flask) that Label Studio calls")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9090)
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="run an rq worker for retrain jobs")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    w.set_defaults(func=_worker)

    r = sub.add_parser("retrain", help="retrain one project now, in this process")
    r.add_argument("project_id", type=int)
    r.set_defaults(func=_retrain)
    return parser


def _preprocess(args: argparse.Namespace) -> int:
    from preprocess.ls_gateway import LabelStudioGateway
    from preprocess.run import run_preprocess
    from preprocess.settings import PreprocessSettings
    from preprocess.slide import OpenSlideReader

    overrides = {k: v for k, v in {
        "classes": args.classes, "cells_per_task": args.cells_per_task, "mpp": args.mpp,
        "checkpoint": args.checkpoint, "backend_url": args.backend_url,
    }.items() if v is not None}
    if args.no_progress:
        overrides["progress"] = False
    settings = PreprocessSettings(**overrides)
    with OpenSlideReader(args.slide, mpp=settings.mpp) as reader:  # a bad slide fails before any LS call
        reader.require_mpp()
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
    result = run_preprocess(args.slide, args.project, settings, gateway)
    print(f"slide {result.slide_id}: {result.n_cells} cells in {result.n_tiles} tasks "
          f"({result.n_imported} new) in project {result.project_id}")
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    print(f"open {result.project_url}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ml_backend.app import create_app
    from ml_backend.settings import BackendSettings

    app = create_app(BackendSettings())
    app.run(host=args.host, port=args.port, threaded=True)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from ml_backend.settings import BackendSettings
    from ml_backend.worker import run_worker

    return run_worker(BackendSettings(), burst=args.burst)


def _retrain(args: argparse.Namespace) -> int:
    import json

    from ml_backend.jobs import retrain_job

    print(json.dumps(retrain_job(args.project_id), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
