"""The scripted pathologist: walks the tasks Label Studio serves, answers from ground truth, submits as the UI.

A :class:`VersionWatch` thread polls the project (as an admin would, not the annotator) and timestamps
each change of its ``model_version``, so the retrain lag is measured without ever waiting for a retrain.
"""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.annotator import Annotator
from bench.replay.scoring import NOT_NUCLEUS, TaskRecord, answer_task, is_stale, match_boxes
from label_config import FROM_NAME, NEUTRAL_LABEL, TileTask, region_to_slide_box
from ml_backend.simulation.efficiency import TimeModel

NOT_NUCLEUS_LABEL = "Not a nucleus"  # label_config.config.NOT_NUCLEUS_LABEL once it lands


def not_nucleus_label(label_config: str) -> str | None:
    """The reserved non-nucleus label if the project's config has it (else the annotator deletes boxes)."""
    try:
        from label_config.config import NOT_NUCLEUS_LABEL as name  # type: ignore[attr-defined]
    except ImportError:
        name = NOT_NUCLEUS_LABEL
    values = {lab.get("value") for lab in ET.fromstring(label_config).iter("Label")}
    return name if name in values else None


@dataclass(frozen=True)
class GroundTruth:
    """Per source image: centroids (G, 2) level-0 px (x, y) and mapped classes (G,)."""

    xy: dict[str, np.ndarray]
    label: dict[str, np.ndarray]


class VersionWatch(threading.Thread):
    """Polls ``GET /api/projects/<id>`` every ``every_s``; ``changes`` holds (monotonic time, new version)."""

    def __init__(self, url: str, api_key: str, project_id: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Token {api_key}"
        self.url, self.project_id, self.every_s = url, project_id, every_s
        self.version: str | None = self._read()
        self.changes: list[tuple[float, str | None]] = []
        self._done = threading.Event()

    def _read(self) -> str | None:
        response = self.session.get(f"{self.url}/api/projects/{self.project_id}", timeout=30)
        response.raise_for_status()
        return response.json().get("model_version") or None

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                version = self._read()
            except requests.RequestException:
                continue  # a slow answer under load: the next poll catches up
            if version != self.version:
                self.changes.append((time.monotonic(), version))
                self.version = version

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def source_of_slides(hali_data_dir: Path) -> dict[str, str]:
    """``{slide id: source image stem}`` from the ``tasks.json`` that ``hali preprocess`` writes."""
    out = {}
    for meta in Path(hali_data_dir).glob("slides/*/tasks.json"):
        data = json.loads(meta.read_text())
        out[data["slide_id"]] = Path(data["slide_path"]).stem
    return out


def box_truths(tile: TileTask, regions: list[dict[str, Any]], gt: GroundTruth, source: str,
               max_dist_px: float) -> tuple[list[str | None], np.ndarray]:
    """Each region's truth (a class, or None: not a nucleus) and its matched ground-truth index (or -1)."""
    centres = np.array([_centre(region_to_slide_box(r, tile)) for r in regions]).reshape(-1, 2)
    idx = match_boxes(centres, gt.xy[source], max_dist_px)
    return [str(gt.label[source][i]) if i >= 0 else None for i in idx], idx


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    x0, y0, w, h = box
    return (x0 + w / 2.0, y0 + h / 2.0)


def pool_truth(tasks: list[dict[str, Any]], sources: dict[str, str], gt: GroundTruth, max_dist_px: float
               ) -> tuple[Counter, dict[str, np.ndarray]]:
    """Truth counts of every box in the project, and per source the GT indices some box matched."""
    counts: Counter = Counter()
    matched: dict[str, list[int]] = {}
    for task in tasks:
        tile = TileTask.from_task_data(task["data"])
        source = sources[tile.slide_id]
        centres = np.array([c.centroid_xy for c in tile.cells]).reshape(-1, 2)
        idx = match_boxes(centres, gt.xy[source], max_dist_px)
        counts.update(str(gt.label[source][i]) if i >= 0 else NOT_NUCLEUS for i in idx)
        matched.setdefault(source, []).extend(idx[idx >= 0].tolist())
    return counts, {s: np.array(v, dtype=np.int64) for s, v in matched.items()}


@dataclass
class Walk:
    """Everything the walk saw: per-task records, submit times, the watch's changes."""

    records: list[TaskRecord]
    submit_times: list[float]
    serve_times: list[float]
    not_nucleus_mode: str


def walk(annotator: Annotator, project_id: int, watch: VersionWatch, gt: GroundTruth, sources: dict[str, str],
         matched_gt: dict[str, np.ndarray], n_tasks: int, max_dist_px: float, think_s: float | None,
         time_model: TimeModel, seconds_per_unit: float, not_nucleus: str | None, log=print) -> Walk:
    """Serve, answer and submit up to ``n_tasks`` tasks; never waits for a retrain.

    ``think_s``: seconds the annotator spends on each task before submitting; None: the task's time-model
    cost in seconds (``seconds_per_unit`` per unit), so retrains race a pathologist's real pace.
    """
    records: list[TaskRecord] = []
    submits: list[float] = []
    serves: list[float] = []
    for rank in range(n_tasks):
        try:
            task = annotator.next_task(project_id)
        except LookupError:
            break
        serves.append(time.monotonic())
        version = watch.version
        prediction = _shown_prediction(annotator, task, project_id, version)
        version = (prediction or {}).get("model_version", version)  # what the UI shows, not the poller's view
        tile = TileTask.from_task_data(task["data"])
        source = sources[tile.slide_id]
        regions = [r for r in (prediction or {}).get("result", []) if r.get("from_name") == FROM_NAME]
        shown = [_label(r) for r in regions]
        truths, idx = box_truths(tile, regions, gt, source, max_dist_px)
        answer = answer_task([None if s in (None, NEUTRAL_LABEL) else s for s in shown], truths, not_nucleus,
                             time_model)
        result = [_answered(r, old, new) for r, old, new in zip(regions, shown, answer.submitted) if new is not None]
        time.sleep(answer.cost * seconds_per_unit if think_s is None else think_s)
        annotator.submit(task["id"], result, lead_time=answer.cost * seconds_per_unit,
                         parent_prediction=(prediction or {}).get("id"), project_id=project_id)
        submits.append(time.monotonic())
        records.append(_record(rank, task["id"], source, version, tile, gt, idx, truths, answer, matched_gt,
                               stale=is_stale(serves[-1], submits[:-1], [t for t, _ in watch.changes])))
        log(f"  task {rank + 1:>3}/{n_tasks}: {source:<8} {len(regions):>3} boxes, "
            f"{answer.n_kept}/{answer.n_suggested} suggestions kept, model {version}")
    return Walk(records, submits, serves, "label" if not_nucleus else "delete")


def _shown_prediction(annotator: Annotator, task: dict[str, Any], project_id: int, version: str | None
                      ) -> dict[str, Any] | None:
    """The prediction the labeling UI pre-fills: of the project's current model version (static mode)."""
    predictions = task.get("predictions")
    if predictions is None:
        response = annotator.get(f"/api/tasks/{task['id']}?project={project_id}")
        response.raise_for_status()
        predictions = response.json().get("predictions", [])
    current = [p for p in predictions if p.get("model_version") == version]
    pool = current or predictions
    return max(pool, key=lambda p: p.get("id", 0)) if pool else None


def _label(region: dict[str, Any]) -> str | None:
    names = (region.get("value") or {}).get("rectanglelabels") or []
    return names[0] if names else None


def _answered(region: dict[str, Any], old: str | None, new: str) -> dict[str, Any]:
    """The region as the UI submits it: same id and geometry, ``origin`` saying whether it was relabelled."""
    out = {k: v for k, v in region.items() if k != "score"}
    out["value"] = {**region["value"], "rectanglelabels": [new]}
    out["origin"] = "prediction" if old == new else "prediction-changed"
    if old == new and "score" in region:
        out["score"] = region["score"]
    return out


def _record(rank, task_id, source, version, tile: TileTask, gt: GroundTruth, idx: np.ndarray, truths, answer,
            matched_gt: dict[str, np.ndarray], stale: bool) -> TaskRecord:
    hits = idx[idx >= 0]
    all_hits = matched_gt.get(source, np.zeros(0, np.int64))
    dup = int(sum(1 for i in hits if (all_hits == i).sum() > 1))
    x0, y0 = tile.x0, tile.y0
    x1, y1 = x0 + tile.width * tile.downsample, y0 + tile.height * tile.downsample
    xy = gt.xy[source]
    inside = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1))
    missed = int(np.setdiff1d(inside, all_hits).size)
    return TaskRecord(rank + 1, task_id, source, version, stale, len(truths), int((idx >= 0).sum()), dup, missed,
                      answer.n_suggested, answer.n_kept, answer.n_wrong, answer.cost, answer.unassisted_cost,
                      dict(Counter(t if t is not None else NOT_NUCLEUS for t in truths)))
