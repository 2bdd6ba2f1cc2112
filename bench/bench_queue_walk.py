"""Offline walks over a replay's own tasks: which queue and learner give suggestions an annotator keeps.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_queue_walk.py STACK_DIR REPLAY_JSON [--seeds 10] [--tasks 40]

``STACK_DIR`` is a finished ``bench/bench_replay.py`` stack folder (its Label Studio SQLite database and
``hali-data``), ``REPLAY_JSON`` that run's ``--out`` (for the project id and class map). Every task of the
project and every cell's truth (nearest ground-truth nucleus within 3 um, else "not a nucleus", as the replay's
annotator answers) are loaded once; then each arm walks ``--tasks`` tasks as the product would serve them, in
memory, without Label Studio:

- before any model the queue serves tasks by id (Label Studio's order); the first task is a seeded random one;
- the model that ranks the queue and suggests the classes of task ``t`` was fitted on the tasks before ``t - 1``
  (the one-task retrain lag the replay measures), leaving out the gold cells (``HALI_GOLD_SHARE``), with the
  product's own learner, smoothing (``CellFeatures``) and ranking (``rank_open_tasks``);
- kept: the suggestion equals the truth; speed-up under the time model of ``hali simulate``;
- effectiveness: balanced accuracy of each model's shown suggestions on every unlabelled cell against the
  labels it was fitted on, area under that curve for N <= 200, relative to the ``sequential`` arm.

Mean +- standard error over ``--seeds`` seeds (the first task and the queue's random state).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.storage import LocalStorage
from bench.bench_context_walk import NOT_NUCLEUS, _tiles, _truth
from bench.bench_replay import PRESETS, RAW_CLASSES
from bench.replay.scoring import map_classes
from bench.replay.walk import source_of_slides
from ml_backend.model.gold import is_gold
from ml_backend.model.linear import LogisticClassifier
from ml_backend.ordering.exploit import exploit_order, task_confidence
from ml_backend.ordering.ranking import rank_tiles
from ml_backend.ordering.strategies import get_strategy, query
from ml_backend.simulation.dataset import parse_class_map
from ml_backend.simulation.effectiveness import curve_area
from ml_backend.simulation.efficiency import TimeModel
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.embeddings import EmbeddingIndex
from preprocess.datasets.consep import load_consep_split


@dataclass(frozen=True)
class Arm:
    queue: str = "spread"          # a strategy name, or "tasks" (id order), "random-tasks"
    exploit: float = 0.0           # HALI_EXPLOIT_SHARE: share of tasks served for confident suggestions
    exploit_top: int = 10          # among this many of the strategy's top tasks
    C: float = 1.0
    balanced: bool = True
    alpha: float = 0.5
    seq_tasks: bool = False


ARMS = {
    "spread (before)": Arm(),
    "tasks in id order (sequential)": Arm(queue="tasks"),
    "random tasks": Arm(queue="random-tasks"),
    "spread, C 0.1": Arm(C=0.1),
    "spread, smooth 0.3": Arm(alpha=0.3),
    "spread, unweighted": Arm(balanced=False),
    "spread + exploit 0.5": Arm(exploit=0.5),
    "spread + exploit 1.0 (default)": Arm(exploit=1.0),
    "spread + exploit 0.5, C 0.1": Arm(exploit=0.5, C=0.1),
    "spread + exploit 1.0 all": Arm(exploit=1.0, exploit_top=0),
    "spread + exploit 1.0 all, C 0.1": Arm(exploit=1.0, exploit_top=0, C=0.1),
    "spread + exploit 0.5 all": Arm(exploit=0.5, exploit_top=0),
    "spread + exploit 1.0, C 0.1": Arm(exploit=1.0, C=0.1),
    "spread + exploit 1.0 top 20": Arm(exploit=1.0, exploit_top=20),
    "spread + exploit 1.0 top 5": Arm(exploit=1.0, exploit_top=5),
    "spread + exploit 1.0 top 40": Arm(exploit=1.0, exploit_top=40),
    "spread + exploit 1.0, smooth 0.3": Arm(exploit=1.0, alpha=0.3),
    "spread + exploit 1.0, smooth 0.7": Arm(exploit=1.0, alpha=0.7),
    "spread + exploit 1.0, smooth 0.8": Arm(exploit=1.0, alpha=0.8),
    "spread + exploit 1.0, smooth 0.9": Arm(exploit=1.0, alpha=0.9),
    "cluster": Arm(queue="cluster"),
    "random cells": Arm(queue="random"),
}
# measured in docs/replay.md, "Exploitation in the queue" (about 6 min per arm and class map on 2 busy cores)
DEFAULT_ARMS = ("spread (before)", "tasks in id order (sequential)", "spread + exploit 0.5",
                "spread + exploit 1.0 (default)", "spread + exploit 1.0 all")


@dataclass
class Project:
    task_ids: np.ndarray      # (T,) task ids, ascending
    cell_task: np.ndarray     # (N,) index into task_ids of each cell
    slide: np.ndarray         # (N,) slide id
    rows: np.ndarray          # (N,) row in its slide's cell table
    y: np.ndarray             # (N,) truth index into targets
    gold: np.ndarray          # (N,) bool
    n_targets: int


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stack_dir", type=Path)
    p.add_argument("replay_json", type=Path, nargs="?", help="the run's --out (else --classes-map, project 1)")
    p.add_argument("--classes-map", default="4class")
    p.add_argument("--consep", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/consep_patches")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--arms", help=f"arm names separated by ';' (of {list(ARMS)}); default {list(DEFAULT_ARMS)}")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.replay_json:
        run = json.loads(args.replay_json.read_text())["runs"][0]
    else:
        cmap = parse_class_map(PRESETS.get(args.classes_map, args.classes_map))
        run = {"classes_map": args.classes_map, "project_id": 1, "classes": map_classes(cmap, RAW_CLASSES)}
    data_dir = args.stack_dir / "hali-data"
    storage = LocalStorage(data_dir)
    index = EmbeddingIndex(storage)
    proj = _project(args, run, index)
    wanted = args.arms.split(";") if args.arms else DEFAULT_ARMS
    unknown = set(wanted) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}; choose from {list(ARMS)}")
    arms = {k: ARMS[k] for k in wanted}
    print(f"{run['classes_map']}: {len(proj.task_ids)} tasks, {len(proj.y)} cells, targets {proj.n_targets}; "
          f"{args.seeds} seeds x {args.tasks} tasks", flush=True)
    results = {}
    for name, arm in arms.items():
        t0 = time.monotonic()
        spec = ContextSpec(smooth_alpha=arm.alpha, features=False)
        feats = CellFeatures(index, storage, spec)
        per_seed = [_walk(proj, feats, arm, seed, args.tasks) for seed in range(args.seeds)]
        results[name] = per_seed
        print(f"  {name:34s} " + _fmt(per_seed) + f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    seq = results.get("tasks in id order (sequential)")
    if seq:
        base = np.mean([r["auc200"] for r in seq])
        for name, per_seed in results.items():
            gain = [r["auc200"] / base - 1 for r in per_seed]
            se = np.std(gain) / np.sqrt(len(gain))
            print(f"  AUC N<=200 vs sequential: {name:34s} {np.mean(gain):+.1%} +- {se:.1%}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


def _fmt(per_seed: list[dict]) -> str:
    def ms(key: str, pct: bool) -> str:
        v = np.array([r[key] for r in per_seed], float)
        m, s = v.mean(), v.std() / np.sqrt(len(v))
        return f"{m:.1%} +- {s:.1%}" if pct else f"{m:.2f} +- {s:.2f}"
    return (f"kept {ms('kept', True)}  (with sugg. {ms('kept_shown', True)})  speed-up {ms('speedup', False)}x  "
            f"bacc AUC200 {ms('auc200', False)}  nuclei {ms('nuclei', True)}")


def _project(args, run, index: EmbeddingIndex) -> Project:
    class_map = parse_class_map(PRESETS.get(run["classes_map"], run["classes_map"]))
    tiles = _tiles(args.stack_dir / "label-studio" / "label_studio.sqlite3", run["project_id"])
    sources, gt = source_of_slides(args.stack_dir / "hali-data"), load_consep_split(args.consep, "test")
    targets = [*run["classes"], NOT_NUCLEUS]
    task_ids = np.array(sorted(tiles))
    cell_task, slide, rows, y, gold = [], [], [], [], []
    for i, tid in enumerate(task_ids.tolist()):
        tile = tiles[tid]
        table = index.table(tile.slide_id)
        rows.append(table.index_of([c.cell_id for c in tile.cells]))
        cell_task.append(np.full(len(tile.cells), i))
        slide.extend([tile.slide_id] * len(tile.cells))
        y.extend(targets.index(_truth(c.centroid_xy, gt[sources[tile.slide_id]][1], class_map)) for c in tile.cells)
        gold.extend(is_gold(c.cell_id, 0.05) for c in tile.cells)
    return Project(task_ids, np.concatenate(cell_task), np.array(slide), np.concatenate(rows), np.array(y),
                   np.array(gold), len(targets))


def _all_proba(proj: Project, feats: CellFeatures, head, suggest: bool) -> np.ndarray:
    out = np.zeros((len(proj.y), proj.n_targets), np.float32)
    for s in np.unique(proj.slide).tolist():
        mine = proj.slide == s
        out[mine] = feats.proba(head, s, proj.rows[mine], suggest)
    return out


def _walk(proj: Project, feats: CellFeatures, arm: Arm, seed: int, n_tasks: int) -> dict:
    rng = np.random.default_rng(seed)
    n_t = len(proj.task_ids)
    x = np.zeros((len(proj.y), feats.index.table(proj.slide[0]).features.shape[1]), np.float32)
    for s in np.unique(proj.slide).tolist():
        mine = proj.slide == s
        x[mine] = feats.features(s, proj.rows[mine])
    served: list[int] = []
    labelled = np.zeros(len(proj.y), bool)
    tm = TimeModel()
    kept = shown = 0
    cost = base = 0.0
    curve: list[tuple[int, float]] = []
    nuclei = 0
    random_order = rng.permutation(n_t)
    first = int(rng.integers(n_t))
    for t in range(n_tasks):
        trained = np.isin(proj.cell_task, served[: max(t - 1, 0)]) if t >= 2 else np.zeros(len(proj.y), bool)
        fit = trained & ~proj.gold
        head = None
        if fit.any():
            head = LogisticClassifier(proj.n_targets, C=arm.C,
                                      class_weight="balanced" if arm.balanced else None).fit(x[fit], proj.y[fit])
        open_mask = np.ones(n_t, bool)
        open_mask[served] = False
        if head is None or arm.queue in ("tasks", "random-tasks"):
            if arm.queue == "random-tasks":
                nxt = int(next(i for i in random_order if open_mask[i]))
            else:
                start = first if not served else served[0]
                nxt = int(next((start + j) % n_t for j in range(n_t) if open_mask[(start + j) % n_t]))
            shown_p = _all_proba(proj, feats, head, True) if head is not None else None
        else:
            proba = _all_proba(proj, feats, head, False)
            shown_p = _all_proba(proj, feats, head, True)
            nxt = _rank_next(proj, head, x, proba, shown_p, labelled, open_mask, arm, seed, len(served))
        cells = proj.cell_task == nxt
        n = int(cells.sum())
        nuclei += int((proj.y[cells] != proj.n_targets - 1).sum())
        base += tm.task_cost(n, None)
        if shown_p is None:
            cost += tm.task_cost(n, None)
        else:
            right = int((shown_p[cells].argmax(1) == proj.y[cells]).sum())
            kept, shown = kept + right, shown + n
            cost += tm.task_cost(n, n - right)
            rest = ~trained
            curve.append((int(fit.sum()), float(balanced_accuracy_score(proj.y[rest], shown_p[rest].argmax(1)))))
        served.append(nxt)
        labelled |= cells
    boxes = int(np.isin(proj.cell_task, served).sum())
    grid, vals = zip(*curve) if curve else ((0,), (0.0,))
    return {"kept": kept / boxes, "kept_shown": kept / max(shown, 1), "speedup": base / cost,
            "auc200": curve_area(list(grid), list(vals), 200), "nuclei": nuclei / boxes, "served": served}


def _rank_next(proj: Project, head, x, proba, shown_p, labelled, open_mask, arm: Arm, seed: int, n_served: int) -> int:
    """The product's ranking (``retrain.run._rank_open_tasks`` then :func:`exploit_order`) over the open tasks."""
    excluded = (shown_p.argmax(1) == proj.n_targets - 1) & ~labelled
    pool = ~excluded
    picks, weights = query(get_strategy(arm.queue), head.transform(x[pool]), proba[pool], labelled[pool], 100, seed,
                           groups=proj.slide[pool])
    picks = np.flatnonzero(pool)[picks]
    order = rank_tiles(proj.cell_task, picks, np.flatnonzero(open_mask).tolist(), weights, excluded)
    if arm.exploit:
        open_cells = open_mask[proj.cell_task]
        conf = task_confidence(shown_p[open_cells], proj.cell_task[open_cells])
        order = exploit_order(order, conf, n_served, arm.exploit, arm.exploit_top)
    return int(order[0])


if __name__ == "__main__":
    sys.exit(main())
