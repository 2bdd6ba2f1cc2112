"""``run_simulation``: the one function where the cell table, the featurizer, the replays and the report meet."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ml_backend.model.context import context_features, local_density, spatial_neighbours
from ml_backend.model.learners import LEARNERS, supports_mc_passes
from ml_backend.ordering.strategies import STRATEGIES, get_strategy, needs_mc_passes
from ml_backend.simulation import SimulationError
from ml_backend.simulation.dataset import (
    DEFAULT_SOURCE_PATTERN,
    CellColumns,
    CellDataset,
    load_cell_table,
    split_pool_test,
)
from ml_backend.simulation.effectiveness import curve_area, label_grid, learning_curve
from ml_backend.simulation.efficiency import (
    ReplayConfig,
    TimeModel,
    acceptance_by_labels,
    replay_annotator,
    summarize_replay,
)
from ml_backend.simulation.embedding import embed_cells, make_featurizer
from ml_backend.simulation.paper import PaperProtocol, replay_paper_patch
from ml_backend.simulation.tasks import group_tasks, spatial_order

logger = logging.getLogger(__name__)

CONTROL = "sequential"
PROTOCOLS = ("campaign", "paper")
ACCEPTANCE_BINS = (0, 50, 100, 200, 500, 1000, 2000)  # labels already given: [0, 50), [50, 100), ...
PAPER = {"speedup": 5.15, "effectiveness_gain_pct": 4.34, "effectiveness_max_labels": 200}


@dataclass(frozen=True)
class SimulationConfig:
    """Everything one ``hali simulate`` run needs; see ``hali simulate --help`` for each option."""

    cells_csv: Path
    images_dir: Path
    out_dir: Path
    columns: CellColumns = CellColumns()
    class_map: dict[str, str] | None = None
    source_pattern: str = DEFAULT_SOURCE_PATTERN
    image_suffix: str = ".jpg"
    test_split: str = "test"
    strategies: tuple[str, ...] = ("coreset", "entropy", "margin", "random", CONTROL)
    task_shapes: tuple[str, ...] = ("200", "50", "20", "focused")
    focus_cells: int = 10
    focus_tile_cells: int = 50
    runs: int = 10
    max_labels: int = 200
    auc_max_labels: int = 200
    featurizer: str = "resnet18"
    checkpoint: Path | None = None
    patch_px: int = 80
    out_px: int = 40
    grid_px: float = 64.0
    retrain_every: int = 5
    ready_after: int = 25
    query_budget: int = 100
    optimizer: str = "adam"
    seed: int = 0
    time_model: TimeModel = field(default_factory=TimeModel)
    cache_dir: Path | None = None
    learner: str = "mlp"
    context_neighbours: int = 0  # k > 0: append the mean features of the k nearest cells and the local density
    density_radius_um: float = 25.0
    mpp: float = 0.25  # micrometres per pixel of the images (CoNSeP: 40x)
    smooth_alpha: float = 1.0  # < 1: p' = alpha p + (1 - alpha) mean of the 8 nearest cells' p
    exploit_share: float = 0.0  # HALI_EXPLOIT_SHARE: share of tasks served for confident suggestions
    exploit_top: int = 10  # HALI_EXPLOIT_TOP
    protocols: tuple[str, ...] = ("campaign",)
    paper_patch_cells: int = 200
    paper_ready_after: int = 20


@dataclass(frozen=True)
class _Split:
    """Pool and test arrays: ``x_*`` features (context included), ``nbr_*`` (n, 8) spatial neighbours
    (indices into the same split) or None when no smoothing is asked for."""

    pool: CellDataset
    x_pool: np.ndarray
    y_test: np.ndarray
    x_test: np.ndarray
    nbr_pool: np.ndarray | None
    nbr_test: np.ndarray | None


def run_simulation(config: SimulationConfig) -> dict:
    """Replay every (task shape, strategy) ``config.runs`` times; write ``simulation.json`` and plots."""
    _check(config)
    data = load_cell_table(config.cells_csv, config.columns, config.class_map, config.source_pattern)
    featurizer = make_featurizer(config.featurizer, config.checkpoint)
    features = embed_cells(data, config.images_dir, featurizer, config.patch_px, config.out_px,
                           config.image_suffix, config.cache_dir or config.out_dir / "cache")
    neighbours = spatial_neighbours(data.xy, data.image)  # cells of one image (tile) only: CoNSeP tiles overlap
    if config.context_neighbours:
        k_nbrs = spatial_neighbours(data.xy, data.image, config.context_neighbours)
        density = local_density(data.xy, config.mpp, data.image, config.density_radius_um)
        features = context_features(features, k_nbrs, density)
    pool_idx, test_idx = split_pool_test(data, config.test_split, random_state=config.seed)
    pool, test = data.subset(pool_idx), data.subset(test_idx)
    smooth = config.smooth_alpha < 1.0
    split = _Split(pool, features[pool_idx], test.y, features[test_idx],
                   _within(neighbours, pool_idx) if smooth else None, _within(neighbours, test_idx) if smooth else None)
    results = []
    if "campaign" in config.protocols:
        results = [_replay_many(config, split, shape, strategy)
                   for shape in config.task_shapes for strategy in config.strategies]
        compare_with_control(results)
    report = _report(config, data, pool, test, featurizer.name, results)
    if "paper" in config.protocols:
        report["paper_protocol"] = _paper_protocol(config, split)
    write_report(report, config.out_dir)
    return report


def _within(neighbours: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``neighbours`` of the rows ``idx``, renumbered as indices into ``idx`` (every neighbour must be in it)."""
    position = np.full(len(neighbours), -1, dtype=np.int64)
    position[idx] = np.arange(len(idx))
    out = position[neighbours[idx]]
    if (out < 0).any():
        raise SimulationError("a cell's spatial neighbour fell on the other side of the pool/test split")
    return out


def _paper_protocol(config: SimulationConfig, split: _Split) -> dict:
    """The paper's efficiency protocol (:mod:`ml_backend.simulation.paper`), ``config.runs`` times."""
    protocol = PaperProtocol(config.paper_patch_cells, config.paper_ready_after, config.retrain_every)
    runs = []
    for r in range(config.runs):
        walk = spatial_order(split.pool, config.grid_px, random_state=config.seed + r)
        nbr = None if split.nbr_pool is None else _walk_neighbours(split.nbr_pool, walk)
        runs.append(replay_paper_patch(split.x_pool[walk], split.pool.y[walk], split.pool.source[walk],
                                       learner=config.learner, protocol=protocol, time_model=config.time_model,
                                       random_state=config.seed + r, neighbours=nbr,
                                       smooth_alpha=config.smooth_alpha, optimizer=config.optimizer))
    out: dict = {"protocol": asdict(protocol), "runs": runs}
    for key in ("speedup", "acceptance_share"):
        values = np.array([run[key] for run in runs], dtype=float)
        out[key] = {"mean": float(np.mean(values)), "se": _se(values)}
    return out


def _walk_neighbours(neighbours: np.ndarray, walk: np.ndarray) -> np.ndarray:
    """Neighbour indices (n, k) renumbered for the cells reordered by the permutation ``walk``."""
    position = np.empty(len(walk), dtype=np.int64)
    position[walk] = np.arange(len(walk))
    return position[neighbours[walk]]


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def _check(config: SimulationConfig) -> None:
    unknown = [s for s in config.strategies if s not in STRATEGIES]
    if unknown:
        raise SimulationError(f"unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
    if config.learner not in LEARNERS:
        raise SimulationError(f"unknown learner {config.learner!r}; choose one of {sorted(LEARNERS)}")
    mc = [s for s in config.strategies if needs_mc_passes(get_strategy(s))]
    if mc and not supports_mc_passes(config.learner):
        raise SimulationError(f"strategies {mc} need MC dropout passes, which learner {config.learner!r} does not "
                              "give; use --learner mlp or drop them")
    bad = [p for p in config.protocols if p not in PROTOCOLS]
    if bad or not config.protocols:
        raise SimulationError(f"--protocol {','.join(config.protocols)!r}: choose from {list(PROTOCOLS)}")
    if not 0.0 <= config.smooth_alpha <= 1.0 or config.context_neighbours < 0:
        raise SimulationError(f"--smooth {config.smooth_alpha} must lie in [0, 1] and --context-neighbours "
                              f"{config.context_neighbours} be >= 0")
    for shape in config.task_shapes:
        if shape != "focused" and not (shape.isdigit() and int(shape) > 0):
            raise SimulationError(f"task shape {shape!r} is neither a cell count nor 'focused'")
    if config.runs < 1 or config.max_labels < 5:
        raise SimulationError(f"--runs {config.runs} must be >= 1 and --max-labels {config.max_labels} >= 5")


def _replay_many(config, split: _Split, shape: str, strategy: str) -> dict:
    start = time.perf_counter()
    grid = label_grid(config.max_labels)
    runs = [_replay_once(config, split, shape, strategy, config.seed + r, grid) for r in range(config.runs)]
    logger.info("simulated %s tasks with %s: %d runs in %.1f s", shape, strategy, config.runs,
                time.perf_counter() - start)
    return _aggregate(shape, strategy, grid, runs, config.auc_max_labels)


def _replay_once(config, split: _Split, shape, strategy, seed, grid) -> dict:
    pool = split.pool
    walk = spatial_order(pool, config.grid_px, random_state=seed)
    x, y = split.x_pool[walk], pool.y[walk]
    nbr = None if split.nbr_pool is None else _walk_neighbours(split.nbr_pool, walk)
    focused = shape == "focused"
    tasks = group_tasks(pool.source[walk], config.focus_tile_cells if focused else int(shape))
    replay_config = ReplayConfig(
        strategy=strategy, focus_cells=config.focus_cells if focused else None, max_labels=config.max_labels,
        retrain_every=config.retrain_every, ready_after=config.ready_after, query_budget=config.query_budget,
        optimizer=config.optimizer, random_state=seed, learner=config.learner, smooth_alpha=config.smooth_alpha,
        exploit_share=config.exploit_share, exploit_top=config.exploit_top)
    replay = replay_annotator(x, y, tasks, len(pool.class_names), replay_config, config.time_model,
                              groups=pool.source[walk], neighbours=nbr)
    curve = learning_curve(x, y, replay.order, split.x_test, split.y_test, grid, len(pool.class_names),
                           optimizer=config.optimizer, random_state=seed, learner=config.learner,
                           test_neighbours=split.nbr_test, smooth_alpha=config.smooth_alpha)
    return {"seed": seed, "efficiency": summarize_replay(replay), "acceptance": acceptance_by_labels(replay),
            "curve": curve}


def _aggregate(shape: str, strategy: str, grid: list[int], runs: list[dict], auc_max: int) -> dict:
    out = {"task_shape": shape, "strategy": strategy, "labels": grid, "runs": runs}
    for metric in ("accuracy", "balanced_accuracy"):
        curves = np.array([r["curve"][metric] for r in runs])
        out[metric] = {"mean": curves.mean(0).tolist(), "std": curves.std(0).tolist(),
                       "auc_small": [curve_area(grid, c, auc_max) for c in curves],
                       "auc_all": [curve_area(grid, c) for c in curves]}
    for key in ("acceptance_share", "speedup", "speedup_assisted", "n_tasks", "cost"):
        values = [r["efficiency"][key] for r in runs if r["efficiency"][key] is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_se"] = _se(np.array(values, dtype=float)) if values else None
    out["acceptance_by_labels"] = acceptance_by_bins(runs)
    return out


def acceptance_by_bins(runs: list[dict], bins: tuple[int, ...] = ACCEPTANCE_BINS) -> list[dict]:
    """Mean (over runs) share of suggestions accepted in tasks opened with ``[lo, hi)`` labels already given;
    ``mean`` None for a bin no run reached."""
    out = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        per_run = [np.mean([a for n, a in r["acceptance"] if lo <= n < hi]) for r in runs
                   if any(lo <= n < hi for n, _ in r["acceptance"])]
        out.append({"labels": [lo, hi], "mean": float(np.mean(per_run)) if per_run else None,
                    "se": _se(np.array(per_run)) if per_run else None, "runs": len(per_run)})
    return out


def compare_with_control(results: list[dict]) -> None:
    """Add each result's AUC gain over the ``sequential`` control of the same task shape, in percent."""
    control = {r["task_shape"]: r for r in results if r["strategy"] == CONTROL}
    for r in results:
        base = control.get(r["task_shape"])
        for metric in ("accuracy", "balanced_accuracy"):
            for auc in ("auc_small", "auc_all"):
                mine = float(np.mean(r[metric][auc]))
                r[metric][f"{auc}_mean"] = mine
                r[metric][f"{auc}_gain_pct"] = (
                    None if base is None else 100.0 * (mine / float(np.mean(base[metric][auc])) - 1.0))


def _report(config, data, pool, test, featurizer_name, results) -> dict:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return {
        "paper": PAPER,
        "settings": settings,
        "featurizer": featurizer_name,
        "classes": list(data.class_names),
        "pool": {"cells": len(pool), "sources": int(len(np.unique(pool.source))),
                 "class_counts": np.bincount(pool.y, minlength=len(data.class_names)).tolist()},
        "test": {"cells": len(test), "sources": int(len(np.unique(test.source))),
                 "class_counts": np.bincount(test.y, minlength=len(data.class_names)).tolist()},
        "results": results,
    }


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "simulation.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=_json_default))
    os.replace(tmp, out_dir / "simulation.json")
    if not report["results"]:  # --protocol paper alone: nothing to plot
        return
    try:
        from ml_backend.simulation.plots import write_plots
    except ImportError:
        logger.warning("matplotlib is not installed: simulation.json written, no plots")
        return
    write_plots(report, out_dir)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
