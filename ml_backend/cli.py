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

    w = sub.add_parser("worker", help="run an rq worker for retrain jobs")
    w.add_argument("--burst", action="store_true", help="exit when the queue is empty")
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
    from preprocess.ls_gateway import LabelStudioGateway
    from preprocess.run import run_preprocess
    from preprocess.settings import PreprocessSettings
    from preprocess.slide import OpenSlideReader

    overrides = {k: v for k, v in {
        "classes": args.classes, "cells_per_task": args.cells_per_task, "mpp": args.mpp,
        "segmenter_weights": args.segmenter_weights,
        "checkpoint": args.checkpoint, "backend_url": args.backend_url, "featurizer": args.featurizer,
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

    return run_worker(BackendSettings(), burst=args.burst)


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
