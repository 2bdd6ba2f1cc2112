"""Counterfactual on a finished replay: the same served tasks, the suggestions each learner would have shown.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_context_walk.py REPLAY_JSON STACK_DIR

The replay (``bench/bench_replay.py``) is path-dependent: the model changes the queue, so two runs serve
different tasks. This replays the suggestions only: for the task served ``t``-th, a model fitted on every box
of the tasks served before ``t - 1`` (a one-task retrain lag, as the replay measured) suggests a class for its
boxes; kept = the suggestion equals the box's truth (nearest ground-truth nucleus within 3 um, else "not a
nucleus"). Learners: plain features, plain + smoothing, context, context + smoothing (the product's
``CellFeatures``), each at the default L2 (C 1) and a stronger one (C 0.1). Reads
the tasks from the stack's Label Studio SQLite database and the cell tables from its ``hali-data``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.storage import LocalStorage
from bench.bench_replay import PRESETS
from bench.replay.scoring import map_class, match_boxes
from bench.replay.walk import source_of_slides
from label_config import TileTask
from ml_backend.model.linear import LogisticClassifier
from ml_backend.simulation.dataset import parse_class_map
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.embeddings import EmbeddingIndex
from preprocess.datasets.consep import MPP, load_consep_split

VARIANTS = {"plain": None, "smooth only": ContextSpec(features=False), "context": ContextSpec(smooth_alpha=1.0),
            "context+smooth 0.5": ContextSpec(smooth_alpha=0.5)}
NOT_NUCLEUS = "not a nucleus"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("replay_json", type=Path)
    p.add_argument("stack_dir", type=Path)
    p.add_argument("--consep", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/consep_patches")
    args = p.parse_args()
    run = json.loads(args.replay_json.read_text())["runs"][0]
    class_map = parse_class_map(PRESETS.get(run["classes_map"], run["classes_map"]))
    tiles = _tiles(args.stack_dir / "label-studio" / "label_studio.sqlite3", run["project_id"])
    data_dir = args.stack_dir / "hali-data"
    sources, gt = source_of_slides(data_dir), load_consep_split(args.consep, "test")
    targets = [*run["classes"], NOT_NUCLEUS]
    walk = [tiles[r["task_id"]] for r in run["tasks"]]
    truth = [np.array([targets.index(_truth(c.centroid_xy, gt[sources[t.slide_id]][1], class_map)) for c in t.cells])
             for t in walk]
    storage = LocalStorage(data_dir)
    index = EmbeddingIndex(storage)
    print(f"{args.replay_json.name}: {len(walk)} tasks, {sum(map(len, truth))} boxes; replay kept "
          f"{run['totals']['kept_share_of_boxes']:.1%}")
    for name, spec in VARIANTS.items():
        features = CellFeatures(index, storage, spec)
        for c in (1.0, 0.1):
            kept, shown = _kept(features, walk, truth, len(targets), c)
            print(f"  {name:20s} C={c:<4g} suggestions kept {kept} of {shown} boxes = {kept / shown:.1%} "
                  f"(tasks 3-{len(walk)})", flush=True)
    return 0


def _kept(features: CellFeatures, walk, truth, k: int, c: float) -> tuple[int, int]:
    kept = shown = 0
    for t in range(2, len(walk)):
        seen = [(walk[s], truth[s]) for s in range(t - 1)]
        x = np.concatenate([features.tile_features(tile) for tile, _ in seen])
        y = np.concatenate([y for _, y in seen])
        head = LogisticClassifier(k, C=c).fit(x, y)
        kept += int(np.sum(features.tile_proba(head, walk[t]).argmax(1) == truth[t]))
        shown += len(truth[t])
    return kept, shown


def _tiles(db: Path, project_id: int) -> dict[int, TileTask]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, data FROM task WHERE project_id = ?", (project_id,)).fetchall()
    return {int(i): TileTask.from_task_data(json.loads(d)) for i, d in rows}


def _truth(xy: tuple[float, float], nuclei, class_map) -> str:
    i = int(match_boxes(np.array([xy]), nuclei.xy, 3.0 / MPP)[0])
    return map_class(str(nuclei.label[i]), class_map) if i >= 0 else NOT_NUCLEUS


if __name__ == "__main__":
    sys.exit(main())
