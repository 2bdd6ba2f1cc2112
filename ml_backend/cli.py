"""The ``hali`` command: preprocess slides, serve the ML backend, run workers.

Every subcommand builds its settings once from ``HALI_*`` environment variables and its flags, and turns
the project's own errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from label_config import LabelConfigError
from ml_backend.errors import BackendError
from preprocess.errors import PreprocessError

log = logging.getLogger("hali")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_TISSUE_THUMBNAIL_PX = 2048  # the thumbnail size run_preprocess finds tissue on


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call drowns the progress
    try:
        return args.func(args)
    except (PreprocessError, LabelConfigError, BackendError) as exc:
        print(f"hali {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def one_line(message: str) -> str:
    """``message`` on one line: a library's multi-line text (torch's, with terminal colours) folded in."""
    return " ".join(_ANSI_ESCAPE.sub("", message).split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hali", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preprocess", help="segment a slide and push its tiles into a Label Studio project")
    p.add_argument("slide", type=Path, nargs="?",
                   help="whole-slide image (SVS, NDPI, MRXS, TIFF, ...) or a PNG/JPEG/TIFF, or a folder of them")
    p.add_argument("--project", help="Label Studio project title (created when missing); required but with --status")
    p.add_argument("--queue", action="store_true",
                   help="enqueue one job per region (and a merge+import job per slide) for `hali worker`s")
    p.add_argument("--status", action="store_true", help="print the progress of queued slides, one line each")
    p.add_argument("--redis-url", help="Redis of the queue (--queue, --status); default HALI_REDIS_URL")
    p.add_argument("--classes", help="comma-separated cell classes, e.g. Tumor,Lymphocyte,Stroma,Other")
    p.add_argument("--cells-per-task", type=int, help="cells per task (tile); default 20")
    p.add_argument("--mpp", type=float, help="microns per pixel, for slides that do not record it")
    p.add_argument("--tile-mpp", type=float, help="microns per pixel of tile images; default 0.5 (20x)")
    p.add_argument("--checkpoint", type=Path, help="ResNet-18 backbone weights (a state_dict .pt file)")
    p.add_argument("--segmenter-weights", type=Path,
                   help="HoVer-Net checkpoint (original repo or tiatoolbox); default: the classical segmenter")
    p.add_argument("--featurizer", choices=("resnet18", "handcrafted"),
                   help="cell features: resnet18 (backbone, see --checkpoint) or handcrafted (no weights needed)")
    p.add_argument("--backend-url", help="URL Label Studio uses to reach `hali serve` (connects the backend)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_preprocess)

    s = sub.add_parser("serve", help="run the ML backend (Flask) that Label Studio calls")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9090)
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="run an rq worker for retrain and preprocessing jobs")
    w.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    w.add_argument("--queues", help="comma-separated queue names; default HALI_QUEUE_NAME,HALI_PREPROCESS_QUEUE_NAME "
                                    "(hali,hali-preprocess)")
    w.set_defaults(func=_worker)

    t = sub.add_parser("pretrain", help="train the ResNet-18 backbone on labeled nuclei (HALI's pretraining)")
    t.add_argument("--table", type=Path, help="CoNSeP-style centroid CSV (patch, split, cx, cy, class column)")
    t.add_argument("--images", type=Path, help="folder of <patch>.jpg images; default images/ beside --table")
    t.add_argument("--class-column", default="type_name", help="class column of --table (default type_name)")
    t.add_argument("--train-split", default="train")
    t.add_argument("--test-split", default="test")
    t.add_argument("--pannuke-train", type=Path, nargs="+", default=[],
                   help="PanNuke fold folders with images.npy and masks.npy (the paper: folds 1 and 2)")
    t.add_argument("--pannuke-test", type=Path, nargs="+", default=[], help="PanNuke test folds (fold 3)")
    t.add_argument("--mpp", type=float, default=0.25, help="microns per pixel of the images (default 0.25, 40x)")
    t.add_argument("--patch-um", type=float, default=20.0, help="patch side in micrometres, as HALI_PATCH_UM")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--device", default="cpu")
    t.add_argument("--limit", type=int, help="use at most this many train (and test) cells, for quick runs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=Path(".state/models/resnet18-pretrained.pt"),
                   help="checkpoint path; the JSON sidecar goes beside it with suffix .json")
    t.set_defaults(func=_pretrain)
    _add_train_segmenter_parser(sub)

    r = sub.add_parser("retrain", help="retrain one project now, in this process")
    r.add_argument("project_id", type=int)
    r.set_defaults(func=_retrain)
    _add_simulate_parser(sub)
    return parser


def _preprocess(args: argparse.Namespace) -> int:
    if args.status:
        return _preprocess_status(args)
    if args.slide is None or not args.project:
        raise PreprocessError("give a slide (or folder of slides) and --project, e.g. "
                              "`hali preprocess slide.svs --project P`, or --status")
    from preprocess.run import run_preprocess
    from preprocess.storage import open_output_storage

    settings = _preprocess_settings(args)
    slides = _slide_paths(args.slide)
    _check_inputs(slides, settings)  # a bad slide or weights file fails before any Label Studio call
    storage = open_output_storage(settings.storage_url, settings.data_dir, settings.ls_files_root,
                                  settings.s3_endpoint_url)
    storage.check()  # bad S3 credentials or a missing bucket fail before any work
    if args.queue:
        return _preprocess_queue(args, slides, settings)
    gateway = _connect_gateway(settings)
    for slide in slides:
        result = run_preprocess(slide, args.project, settings, gateway, storage)
        print(f"slide {result.slide_id}: {result.n_cells} cells in {result.n_tiles} tasks "
              f"({result.n_imported} new) in project {result.project_id}")
        print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
        print(f"open {result.project_url}")
    return 0


def _connect_gateway(settings):
    from preprocess.ls_gateway import LabelStudioGateway

    return LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value(),
                                      timeout_s=settings.ls_timeout_s, retry=settings.retry_policy(),
                                      batch_size=settings.ls_import_batch_size)


def _preprocess_settings(args: argparse.Namespace):
    from preprocess.settings import PreprocessSettings

    overrides = {k: v for k, v in {
        "classes": args.classes, "cells_per_task": args.cells_per_task, "mpp": args.mpp, "tile_mpp": args.tile_mpp,
        "segmenter_weights": args.segmenter_weights,
        "checkpoint": args.checkpoint, "backend_url": args.backend_url, "featurizer": args.featurizer,
    }.items() if v is not None}
    if args.no_progress:
        overrides["progress"] = False
    return PreprocessSettings(**overrides)


def _check_inputs(slides: list[Path], settings) -> None:
    """Fail in seconds, before any Label Studio call or segmentation, on a slide or weights that cannot work.

    Opens each slide, needs its mpp and some tissue on its thumbnail, and loads the backbone checkpoint and
    HoVer-Net weights the settings name (each raises its own :class:`PreprocessError` with the fix).
    """
    from preprocess.errors import SlideError
    from preprocess.featurize import make_featurizer
    from preprocess.hovernet.weights import load_hovernet
    from preprocess.slide import OpenSlideReader
    from preprocess.tissue import detect_tissue

    for slide in slides:
        with OpenSlideReader(slide, mpp=settings.mpp) as reader:
            reader.require_mpp()
            thumbnail, _ = reader.thumbnail(_TISSUE_THUMBNAIL_PX)
            if not detect_tissue(thumbnail).any():
                raise SlideError(
                    f"slide {slide} shows no tissue on its thumbnail (blank, or all background); check that it "
                    "is the right file and that the scan is not empty"
                )
    if settings.featurizer == "resnet18" and settings.checkpoint is not None:
        make_featurizer(settings.featurizer, settings.checkpoint, "cpu", settings.patch_um)
    if settings.segmenter_weights is not None:
        load_hovernet(settings.segmenter_weights, "cpu")


SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".png", ".jpg", ".jpeg")


def _slide_paths(path: Path) -> list[Path]:
    """``path`` itself, or the slides (by suffix) directly in the folder ``path``, sorted.

    A folder named like a slide (``case.mrxs/``) is taken as a slide, so the reader says what to pass instead.
    """
    if not path.is_dir() or path.suffix.lower() in SLIDE_SUFFIXES:
        return [path]
    slides = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
    if not slides:
        raise PreprocessError(f"folder {path} holds no slides ({', '.join(SLIDE_SUFFIXES)}); pass a slide or "
                              "another folder")
    return slides


def _preprocess_queue(args: argparse.Namespace, slides: list[Path], settings) -> int:
    from rq import Queue

    from ml_backend.preprocess_progress import PreprocessProgress
    from ml_backend.preprocess_queue import enqueue_slide
    from preprocess.run import ensure_project

    backend, redis = _backend_redis(args)
    # Fail fast, before any job runs: Label Studio down, or the project's classes differ.
    gateway = _connect_gateway(settings)
    ensure_project(gateway, args.project, settings.class_list())
    queue, progress = Queue(backend.preprocess_queue_name, connection=redis), PreprocessProgress(redis)
    for slide in slides:
        report = enqueue_slide(queue, progress, slide, args.project, settings, backend)
        print(f"slide {report.slide_id}: {report.n_regions} regions, {report.n_done} done, "
              f"{report.n_enqueued} enqueued on {queue.name!r}; merge {report.merge}  ({slide})")
    print(f"work them with `hali worker` (queues {backend.queue_name},{backend.preprocess_queue_name}); "
          "follow with `hali preprocess --status`")
    return 0


def _preprocess_status(args: argparse.Namespace) -> int:
    from ml_backend.preprocess_progress import PreprocessProgress

    _, redis = _backend_redis(args)
    statuses = PreprocessProgress(redis).statuses()
    for status in statuses:
        print(status.line())
    if not statuses:
        print("no slide has been queued (`hali preprocess --queue SLIDE --project P`)")
    return 0


def _backend_redis(args: argparse.Namespace):
    """BackendSettings (``--redis-url`` over HALI_REDIS_URL) and a Redis client that answered a ping."""
    from redis import Redis
    from redis.exceptions import RedisError

    from ml_backend.settings import BackendSettings

    backend = BackendSettings(**({"redis_url": args.redis_url} if args.redis_url else {}))
    redis = Redis.from_url(backend.redis_url)
    try:
        redis.ping()
    except RedisError as exc:
        raise BackendError(f"Redis at {backend.redis_url} is unreachable ({exc}); start redis-server or pass "
                           "--redis-url / HALI_REDIS_URL") from exc
    return backend, redis


def _pretrain(args: argparse.Namespace) -> int:
    from preprocess.pretrain import run_pretrain

    meta = run_pretrain(
        args.out, table=args.table, images_dir=args.images, class_column=args.class_column,
        train_split=args.train_split, test_split=args.test_split, pannuke_train=args.pannuke_train,
        pannuke_test=args.pannuke_test, mpp=args.mpp, patch_um=args.patch_um, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, device=args.device, limit=args.limit, random_state=args.seed,
    )
    nan = float("nan")
    print(f"wrote {args.out} (classes {', '.join(meta['classes'])}; test accuracy "
          f"{meta.get('test_accuracy', nan):.3f}, balanced {meta.get('test_balanced_accuracy', nan):.3f})")
    print(f"use it with: hali preprocess ... --checkpoint {args.out}")
    return 0


def _add_train_segmenter_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("train-segmenter", help="fine-tune HoVer-Net on images with nucleus instance masks")
    g.add_argument("--data", type=Path, required=True, help="PanNuke fold folder(s) or a CoNSeP-style folder")
    g.add_argument("--format", required=True, help="pannuke (images.npy + masks.npy) or consep (inst_maps_*.npz)")
    g.add_argument("--out", type=Path, required=True, help="checkpoint path; the JSON sidecar goes beside it (.json)")
    g.add_argument("--init-weights", type=Path, help="HoVer-Net checkpoint to start from (any layout preprocess reads)")
    g.add_argument("--split", default="train", help="CoNSeP-style split to train on (default train)")
    g.add_argument("--mode", help="fast or original, without --init-weights (default fast)")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--freeze-epochs", type=int,
                   help="epochs with the encoder frozen (default: half with --init-weights, else 0)")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (the paper's 1e-4)")
    g.add_argument("--patch-px", type=int, help="training input side (default the mode's: 256 fast, 270 original)")
    g.add_argument("--val-fraction", type=float, default=0.2, help="share of source images held out")
    g.add_argument("--patience", type=int, default=3, help="epochs without a lower validation loss before stopping")
    g.add_argument("--limit", type=int, help="use at most this many images, for quick runs")
    g.add_argument("--no-augmentation", action="store_true", help="no random flips and rotations")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(func=_train_segmenter)


def _train_segmenter(args: argparse.Namespace) -> int:
    from preprocess.hovernet.train import TrainConfig, run_train_segmenter

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, freeze_epochs=args.freeze_epochs,
        mode=args.mode, patch_px=args.patch_px, val_fraction=args.val_fraction, patience=args.patience,
        augmentation=not args.no_augmentation, limit=args.limit, device=args.device, seed=args.seed,
    )
    meta = run_train_segmenter(args.data, args.format, args.out, config, args.init_weights, args.split,
                               progress=not args.no_progress)
    metrics = meta["metrics"]
    print(f"wrote {args.out} ({meta['mode']} mode, {meta['n_types'] or 'no'} types; best epoch "
          f"{meta['best_epoch']} of {meta['epochs_run']}: " + ", ".join(
              f"{k} {v:.3f}" for k, v in {**meta["losses"], **metrics}.items()) + ")")
    print(f"use it with: hali preprocess ... --segmenter-weights {args.out}")
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

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run_worker(BackendSettings(), burst=args.burst, queues=queues)


def _retrain(args: argparse.Namespace) -> int:
    import json

    from ml_backend.jobs import retrain_job

    print(json.dumps(retrain_job(args.project_id), indent=2, default=str))
    return 0


def _add_simulate_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("simulate", help="replay an oracle annotator over labeled cells: speed-up and learning curves")
    m.add_argument("--cells-csv", type=Path, default=Path("../shared/data/consep_patches/nuclei.csv"))
    m.add_argument("--images-dir", type=Path, default=Path("../shared/data/consep_patches/images"))
    m.add_argument("--image-suffix", default=".jpg", help="appended to the image column's value to find the file")
    m.add_argument("--image-col", default="patch")
    m.add_argument("--x-col", default="cx", help="centroid column (image pixels)")
    m.add_argument("--y-col", default="cy", help="centroid row (image pixels)")
    m.add_argument("--class-col", default="type_name")
    m.add_argument("--split-col", default="split", help="'' when the table has none (split by source image)")
    m.add_argument("--test-split", default="test", help="value of the split column that marks test cells")
    m.add_argument("--source-pattern", default=r"^(.+)_\d{3}$",
                   help="regex whose group 1 is an image's source (tiles of one source stay on one side)")
    m.add_argument("--classes-map", help="e.g. inflammatory=TIL,*=other; default: the raw classes")
    m.add_argument("--strategies", default="coreset,entropy,margin,random,sequential")
    m.add_argument("--cells-per-task", default="200,50,20,focused", help="task sizes, and/or 'focused'")
    m.add_argument("--focus-cells", type=int, default=10, help="boxed cells in a focused task")
    m.add_argument("--focus-tile-cells", type=int, default=50, help="cells in a focused task's context tile")
    m.add_argument("--runs", type=int, default=10)
    m.add_argument("--max-labels", type=int, default=200)
    m.add_argument("--auc-max-labels", type=int, default=200, help="N range of the small-N area (paper: 200)")
    m.add_argument("--ready-after", type=int, default=25, help="labels before suggestions are shown")
    m.add_argument("--retrain-every", type=int, default=5)
    m.add_argument("--optimizer", default="adam", help="head optimiser preset: adam or paper-sgd")
    m.add_argument("--featurizer", default="resnet18")
    m.add_argument("--checkpoint", type=Path, help="ResNet-18 backbone weights; random-init without")
    m.add_argument("--patch-px", type=int, default=80, help="patch side around each centroid, image pixels")
    m.add_argument("--time-model", default="1,0.1,1,3",
                   help="unassisted per cell, review per cell, per wrong suggestion, per task")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True, help="folder for simulation.json and the plots")
    m.add_argument("--cache-dir", type=Path, help="feature cache (default OUT/cache)")
    m.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    import torch

    from ml_backend.simulation import SimulationError
    from ml_backend.simulation.dataset import CellColumns, parse_class_map
    from ml_backend.simulation.efficiency import TimeModel
    from ml_backend.simulation.run import SimulationConfig, run_simulation

    torch.set_num_threads(1)  # the head is tiny; more threads only add overhead
    try:
        time_model = TimeModel(*(float(v) for v in args.time_model.split(",")))
    except (TypeError, ValueError):
        raise SimulationError(f"--time-model {args.time_model!r} must be 4 numbers, e.g. 1,0.1,1,3") from None
    config = SimulationConfig(
        cells_csv=args.cells_csv, images_dir=args.images_dir, out_dir=args.out, image_suffix=args.image_suffix,
        columns=CellColumns(args.image_col, args.x_col, args.y_col, args.class_col, args.split_col or None),
        class_map=parse_class_map(args.classes_map), source_pattern=args.source_pattern,
        test_split=args.test_split, strategies=tuple(args.strategies.split(",")),
        task_shapes=tuple(args.cells_per_task.split(",")), focus_cells=args.focus_cells,
        focus_tile_cells=args.focus_tile_cells, runs=args.runs, max_labels=args.max_labels,
        auc_max_labels=args.auc_max_labels, featurizer=args.featurizer, checkpoint=args.checkpoint,
        patch_px=args.patch_px, retrain_every=args.retrain_every, ready_after=args.ready_after,
        optimizer=args.optimizer, seed=args.seed, time_model=time_model, cache_dir=args.cache_dir,
    )
    report = run_simulation(config)
    from ml_backend.simulation.summary import format_summary

    print(format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
