"""``run_simulation``: the one function where the cell table, the featurizer, the replays and the report meet."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ml_backend.ordering.strategies import STRATEGIES
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
from ml_backend.simulation.tasks import group_tasks, spatial_order

logger = logging.getLogger(__name__)

CONTROL = "sequential"
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


def run_simulation(config: SimulationConfig) -> dict:
    """Replay every (task shape, strategy) ``config.runs`` times; write ``simulation.json`` and plots."""
    _check(config)
    data = load_cell_table(config.cells_csv, config.columns, config.class_map, config.source_pattern)
    featurizer = make_featurizer(config.featurizer, config.checkpoint)
    features = embed_cells(data, config.images_dir, featurizer, config.patch_px, config.out_px,
                           config.image_suffix, config.cache_dir or config.out_dir / "cache")
    pool_idx, test_idx = split_pool_test(data, config.test_split, random_state=config.seed)
    pool, test = data.subset(pool_idx), data.subset(test_idx)
    results = [_replay_many(config, pool, features[pool_idx], test.y, features[test_idx], shape, strategy)
               for shape in config.task_shapes for strategy in config.strategies]
    compare_with_control(results)
    report = _report(config, data, pool, test, featurizer.name, results)
    write_report(report, config.out_dir)
    return report


def _check(config: SimulationConfig) -> None:
    unknown = [s for s in config.strategies if s not in STRATEGIES]
    if unknown:
        raise SimulationError(f"unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
    for shape in config.task_shapes:
        if shape != "focused" and not (shape.isdigit() and int(shape) > 0):
            raise SimulationError(f"task shape {shape!r} is neither a cell count nor 'focused'")
    if config.runs < 1 or config.max_labels < 5:
        raise SimulationError(f"--runs {config.runs} must be >= 1 and --max-labels {config.max_labels} >= 5")


def _replay_many(config, pool: CellDataset, x_pool, y_test, x_test, shape: str, strategy: str) -> dict:
    start = time.perf_counter()
    grid = label_grid(config.max_labels)
    runs = [_replay_once(config, pool, x_pool, y_test, x_test, shape, strategy, config.seed + r, grid)
            for r in range(config.runs)]
    logger.info("simulated %s tasks with %s: %d runs in %.1f s", shape, strategy, config.runs,
                time.perf_counter() - start)
    return _aggregate(shape, strategy, grid, runs, config.auc_max_labels)


def _replay_once(config, pool, x_pool, y_test, x_test, shape, strategy, seed, grid) -> dict:
    walk = spatial_order(pool, config.grid_px, random_state=seed)
    x, y = x_pool[walk], pool.y[walk]
    focused = shape == "focused"
    tasks = group_tasks(pool.source[walk], config.focus_tile_cells if focused else int(shape))
    replay_config = ReplayConfig(
        strategy=strategy, focus_cells=config.focus_cells if focused else None, max_labels=config.max_labels,
        retrain_every=config.retrain_every, ready_after=config.ready_after, query_budget=config.query_budget,
        optimizer=config.optimizer, random_state=seed)
    replay = replay_annotator(x, y, tasks, len(pool.class_names), replay_config, config.time_model)
    curve = learning_curve(x, y, replay.order, x_test, y_test, grid, len(pool.class_names),
                           optimizer=config.optimizer, random_state=seed)
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
