"""``hali preprocess``, ``hali pretrain`` and ``hali train-segmenter``: the preprocessing step's commands.

:func:`add_commands` registers them on the ``hali`` parser (``ml_backend.cli``); each handler builds its
settings once from ``HALI_*`` variables and its flags, and raises the project's own errors, which the
``hali`` entry point prints as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from adapters.errors import SlideError
from adapters.label_studio import LabelStudioGateway
from adapters.settings import redacted_url
from adapters.slide_reader import OpenSlideReader
from adapters.storage import open_output_storage
from preprocess.errors import PreprocessError, QueueError
from preprocess.features.featurize import FEATURIZERS, make_featurizer
from preprocess.features.pretrain import run_pretrain
from preprocess.nuclei.hovernet.train import TrainConfig, run_train_segmenter
from preprocess.nuclei.hovernet.weights import load_hovernet
from preprocess.nuclei.tissue import detect_tissue
from preprocess.queue.jobs import enqueue_slide
from preprocess.queue.progress import PreprocessProgress
from preprocess.run import ensure_project, run_preprocess
from preprocess.settings import PreprocessSettings

_TISSUE_THUMBNAIL_PX = 2048  # the thumbnail size run_preprocess finds tissue on


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``preprocess``, ``pretrain`` and ``train-segmenter`` on the ``hali`` subparsers."""
    p = sub.add_parser("preprocess", help="segment a slide and push its tiles into a Label Studio project")
    p.add_argument("slide", type=Path, nargs="?",
                   help="whole-slide image (SVS, NDPI, MRXS, TIFF, ...) or a PNG/JPEG/TIFF, or a folder of them")
    p.add_argument("--project", help="Label Studio project title (created when missing); required but with --status")
    p.add_argument("--queue", action="store_true",
                   help="enqueue one job per region (and a merge+import job per slide) for `hali worker`s")
    p.add_argument("--status", action="store_true", help="print the progress of queued slides, one line each")
    p.add_argument("--redis-url", help="Redis of the queue (--queue, --status); default HALI_REDIS_URL")
    p.add_argument("--classes", help="comma-separated cell classes, e.g. Tumor,Lymphocyte,Stroma,Other")
    p.add_argument("--cells-per-task", type=int,
                   help="cells per task (tile mode), or cells of context a focused task shows; default 20")
    p.add_argument("--task-mode", choices=("tile", "focused"),
                   help="tile: every cell of a task is marked (default); focused: a context window in which only "
                        "--focus-cells cells are marked")
    p.add_argument("--mark", choices=("rectangle", "keypoint"),
                   help="mark each cell with a box (default) or a dot at its centre, which never overlaps")
    p.add_argument("--focus-cells", type=int, help="cells marked per focused task; default 10")
    p.add_argument("--overlap-share", type=float, help="share of tasks read by --overlap-readers annotators "
                   "(agreement, `hali labels`); default 0: the project's setting is left as it is")
    p.add_argument("--overlap-readers", type=int, help="annotators per overlapping task; default 2")
    p.add_argument("--tile-min-px", type=int, help="smallest side of a task image in pixels; default 256")
    p.add_argument("--mpp", type=float, help="microns per pixel, for slides that do not record it")
    p.add_argument("--tile-mpp", type=float, help="microns per pixel of tile images; default 0.5 (20x)")
    p.add_argument("--checkpoint", type=Path, help="featurizer weights: cellnet's (with its .json sidecar) or a ResNet-18/encoder "
                        "state_dict .pt file")
    p.add_argument("--segmenter", choices=("auto", "learned", "classical"),
                   help="nucleus segmenter: auto (default: learned on H&E, classical on IHC), learned or classical")
    p.add_argument("--segmenter-weights", type=Path,
                   help="HoVer-Net checkpoint (original repo or tiatoolbox); overrides --segmenter")
    p.add_argument("--max-blur", type=float, metavar="B",
                   help="leave out nuclei in out-of-focus tissue: 50 um blocks whose blur (0 sharp .. 1 blurred) "
                        "exceeds B (default 0.6; 1 keeps everything)")
    p.add_argument("--featurizer", choices=FEATURIZERS,
                   help="cell features: cellnet (default; the packaged CNN, or weights from --checkpoint), "
                        "handcrafted (no weights needed), resnet18 (backbone, see --checkpoint) or "
                        "encoder (any torchvision/timm backbone: --encoder and --checkpoint)")
    p.add_argument("--encoder", help="with --featurizer encoder: e.g. timm:vit_small_patch16_224 or "
                                     "torchvision:resnet50 (weights from --checkpoint; nothing is downloaded)")
    p.add_argument("--backend-url", help="URL Label Studio uses to reach `hali serve` (connects the backend)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_preprocess)

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


def _preprocess(args: argparse.Namespace) -> int:
    if args.status:
        return _preprocess_status(args)
    if args.slide is None or not args.project:
        raise PreprocessError("give a slide (or folder of slides) and --project, e.g. "
                              "`hali preprocess slide.svs --project P`, or --status")
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


def _connect_gateway(settings: PreprocessSettings) -> LabelStudioGateway:
    return LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value(),
                                      timeout_s=settings.ls_timeout_s, retry=settings.retry_policy(),
                                      batch_size=settings.ls_import_batch_size)


def _preprocess_settings(args: argparse.Namespace) -> PreprocessSettings:
    overrides = {k: v for k, v in {
        "classes": args.classes, "cells_per_task": args.cells_per_task, "mpp": args.mpp, "tile_mpp": args.tile_mpp,
        "task_mode": args.task_mode, "focus_cells": args.focus_cells, "tile_min_px": args.tile_min_px,
        "mark": args.mark, "overlap_share": args.overlap_share, "overlap_readers": args.overlap_readers,
        "segmenter_weights": args.segmenter_weights,
        "checkpoint": args.checkpoint, "backend_url": args.backend_url, "featurizer": args.featurizer,
        "redis_url": args.redis_url, "encoder": args.encoder, "segmenter": args.segmenter,
        "max_blur": args.max_blur,
    }.items() if v is not None}
    if args.no_progress:
        overrides["progress"] = False
    return PreprocessSettings(**overrides)


def _check_inputs(slides: list[Path], settings: PreprocessSettings) -> None:
    """Fail in seconds, before any Label Studio call or segmentation, on a slide or weights that cannot work.

    Opens each slide, needs its mpp and some tissue on its thumbnail, and loads the backbone checkpoint and
    HoVer-Net weights the settings name (each raises its own :class:`PreprocessError` with the fix).
    """
    for slide in slides:
        with OpenSlideReader(slide, mpp=settings.mpp) as reader:
            reader.require_mpp()
            thumbnail, _ = reader.thumbnail(_TISSUE_THUMBNAIL_PX)
            if not detect_tissue(thumbnail).any():
                raise SlideError(
                    f"slide {slide} shows no tissue on its thumbnail (blank, or all background); check that it "
                    "is the right file and that the scan is not empty"
                )
    if settings.featurizer == "encoder" or (settings.featurizer == "resnet18" and settings.checkpoint is not None):
        make_featurizer(settings.featurizer, settings.checkpoint, "cpu", settings.patch_um, settings.encoder,
                        settings.encoder_input_px)
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


def _preprocess_queue(args: argparse.Namespace, slides: list[Path], settings: PreprocessSettings) -> int:
    redis = _redis(settings)
    # Fail fast, before any job runs: Label Studio down, or the project's classes differ.
    gateway = _connect_gateway(settings)
    ensure_project(gateway, args.project, settings.class_list(), settings.mark)
    queue, progress = Queue(settings.preprocess_queue_name, connection=redis), PreprocessProgress(redis)
    for slide in slides:
        report = enqueue_slide(queue, progress, slide, args.project, settings)
        print(f"slide {report.slide_id}: {report.n_regions} regions, {report.n_done} done, "
              f"{report.n_enqueued} enqueued on {queue.name!r}; merge {report.merge}  ({slide})")
    print(f"work them with `hali worker` (queues {settings.queue_name},{settings.preprocess_queue_name}); "
          "follow with `hali preprocess --status`")
    return 0


def _preprocess_status(args: argparse.Namespace) -> int:
    redis = _redis(_preprocess_settings(args))
    statuses = PreprocessProgress(redis).statuses()
    for status in statuses:
        print(status.line())
    if not statuses:
        print("no slide has been queued (`hali preprocess --queue SLIDE --project P`)")
    return 0


def _redis(settings: PreprocessSettings) -> Redis:
    """A client of the queue's Redis (``--redis-url`` over HALI_REDIS_URL) that answered a ping."""
    redis = Redis.from_url(settings.redis_url)
    try:
        redis.ping()
    except RedisError as exc:
        raise QueueError(f"Redis at {redacted_url(settings.redis_url)} is unreachable ({exc}); start redis-server or pass "
                         "--redis-url / HALI_REDIS_URL") from exc
    return redis


def _pretrain(args: argparse.Namespace) -> int:
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


