"""``hali simulate``: replay an oracle annotator over labelled cells (speed-up and learning curves).

:func:`add_commands` registers it on the ``hali`` parser (``ml_backend.cli``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ml_backend.simulation import SimulationError
from ml_backend.simulation.dataset import CellColumns, parse_class_map
from ml_backend.simulation.efficiency import TimeModel
from ml_backend.simulation.run import SimulationConfig, run_simulation
from ml_backend.simulation.summary import format_summary


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``simulate`` on the ``hali`` subparsers."""
    _add_simulate_parser(sub)


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
    m.add_argument("--learner", default="mlp",
                   help="mlp (the paper's 2x32 head) or logreg (ml_backend/model/learners.py)")
    m.add_argument("--context-neighbours", type=int, default=0,
                   help="k > 0: append the mean features of each cell's k nearest cells and its local density")
    m.add_argument("--density-radius-um", type=float, default=25.0, help="local density: cells within this radius")
    m.add_argument("--mpp", type=float, default=0.25, help="micrometres per image pixel (CoNSeP: 0.25, 40x)")
    m.add_argument("--smooth", type=float, default=1.0,
                   help="alpha < 1: p' = alpha p + (1 - alpha) mean of the 8 nearest cells' p (issue: 0.5)")
    m.add_argument("--exploit-share", type=float, default=0.0,
                   help="share of tasks served for confident suggestions (HALI_EXPLOIT_SHARE; docs/replay.md)")
    m.add_argument("--exploit-top", type=int, default=10, help="among this many of the strategy's first tasks")
    m.add_argument("--protocol", default="campaign",
                   help="campaign (tasks, strategies, learning curves), paper (one balanced ~200-cell patch, "
                        "binary classes, suggestions after 20 labels), or campaign,paper")
    m.add_argument("--paper-patch-cells", type=int, default=200)
    m.add_argument("--paper-ready-after", type=int, default=20)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, required=True, help="folder for simulation.json and the plots")
    m.add_argument("--cache-dir", type=Path, help="feature cache (default OUT/cache)")
    m.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
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
        learner=args.learner, context_neighbours=args.context_neighbours, density_radius_um=args.density_radius_um,
        mpp=args.mpp, smooth_alpha=args.smooth, exploit_share=args.exploit_share, exploit_top=args.exploit_top,
        protocols=tuple(args.protocol.split(",")),
        paper_patch_cells=args.paper_patch_cells, paper_ready_after=args.paper_ready_after,
    )
    report = run_simulation(config)
    print(format_summary(report))
    return 0
