"""``publish_dashboard``: after a retrain, the project's metrics snapshot, coverage maps and description line.

Called by the retrain with what it already read from Label Studio (every task and annotation), so the only
extra calls are the user list, the model version of predictions not seen before, the connected backend's URL
and one description update. A failure here is logged and never fails the retrain: the new model and queue
order are live already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapters.errors import AdapterError
from adapters.label_studio import LabelStudioGateway
from adapters.slide_reader import OpenSlideReader
from label_config import LabelSet, TileTask
from ml_backend.dashboard.coverage import MAX_SIDE_PX, draw_coverage, task_spans
from ml_backend.dashboard.metrics import AnnotationFact, facts_from_records
from ml_backend.dashboard.snapshot import build_snapshot, status_line, with_status_line
from ml_backend.dashboard.store import DashboardFiles
from ml_backend.export.formats import label_colours
from ml_backend.labels.records import AnnotationRecord
from ml_backend.labels.tile_store import slide_ids
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.embeddings import tables_storage
from preprocess.layout import read_slide_meta, skip_tile, tasks_key

log = logging.getLogger(__name__)
_SLIDE_FILES: dict[str, tuple[str | None, str | None, float | None]] = {}  # tasks.json -> (version, slide, mpp)
MAX_PREDICTION_LOOKUPS = 400  # per retrain; the rest are dated by time now and looked up next time


def publish_dashboard(project_id: int, settings: BackendSettings, gateway: LabelStudioGateway,
                      tiles: Mapping[int, TileTask],
                      records: Mapping[int, AnnotationRecord], labels: Mapping[str, str], label_set: LabelSet,
                      models_dir: Path) -> dict[str, Any] | None:
    """Write the snapshot and coverage maps, update the description line; returns the snapshot (None on failure)."""
    t0 = time.perf_counter()
    try:
        files = DashboardFiles(models_dir)
        project = gateway.project_settings(project_id)
        colours = label_colours(project.label_config)
        facts = facts_from_records(records, tiles, gateway.user_names())
        versions = _prediction_versions(files, gateway, facts, records)
        snapshot = build_snapshot(project_id, facts, tiles, labels, label_set.targets, files.sidecars(), versions,
                                  colours, settings.gold_share)
        snapshot["coverage"] = _coverage(files, settings, tiles, facts, labels, colours,
                                         files.read_snapshot() or {})
        snapshot["seconds"] = round(time.perf_counter() - t0, 3)
        files.write_snapshot(snapshot)
        url = _dashboard_url(settings, gateway, project_id)
        gateway.set_description(project_id, with_status_line(project.description, status_line(snapshot, url)))
    except Exception:  # a by-product of the retrain: log it, never undo the retrain for it
        log.exception("project %s: the dashboard snapshot failed; the retrain itself is done", project_id)
        return None
    log.info("project %s: dashboard snapshot in %.2f s", project_id, time.perf_counter() - t0)
    return snapshot


def _prediction_versions(files: DashboardFiles, gateway: LabelStudioGateway, facts: Sequence[AnnotationFact],
                         records: Mapping[int, AnnotationRecord]) -> dict[int, str]:
    """Prediction id -> model version: what the mirror read with each annotation (superseded predictions are
    pruned from Label Studio soon after), then the cache, then Label Studio for the rest."""
    known = files.prediction_versions()
    known.update({r.parent_prediction: r.model_version for r in records.values()
                  if r.parent_prediction is not None and r.model_version})
    wanted = sorted({f.prediction_id for f in facts if f.prediction_id is not None} - set(known))
    if wanted:
        known.update(gateway.prediction_versions(wanted[-MAX_PREDICTION_LOOKUPS:]))
        files.save_prediction_versions(known)
    return known


def _coverage(files: DashboardFiles, settings: BackendSettings, tiles: Mapping[int, TileTask],
              facts: Sequence[AnnotationFact], labels: Mapping[str, str], colours: Mapping[str, tuple[int, int, int]],
              previous: Mapping[str, Any]) -> list[str]:
    """Redraw the coverage map of each slide whose tasks or labels changed since the last snapshot."""
    done_tasks = {f.task_id for f in facts}
    by_slide: dict[str, list[int]] = {}  # task ids per slide; a tile is built only to be drawn
    for task_id, slide_id in zip(tiles, slide_ids(tiles)):
        by_slide.setdefault(slide_id, []).append(task_id)
    before = (previous.get("progress") or {}).get("slides") or {}
    now = _slide_counts(by_slide, tiles, done_tasks, labels)
    drawn = []
    for slide_id, task_ids in sorted(by_slide.items()):
        path = files.coverage_path(slide_id)
        if path is None:
            continue
        drawn.append(slide_id)
        old = before.get(slide_id) or {}
        if path.exists() and (old.get("tasks_done"), old.get("cells_labelled")) == now[slide_id]:
            continue
        thumb = _thumbnail(files, settings, slide_id)
        is_done = np.array([t in done_tasks for t in task_ids], dtype=bool)
        png = draw_coverage(task_spans(tiles, task_ids), is_done, (tiles[t] for t in task_ids if t in done_tasks),
                            labels, colours, *(thumb or (None, None)))
        files.write_png(path, png)
    return drawn


def _slide_counts(by_slide: Mapping[str, list[int]], tiles: Mapping[int, TileTask], done_tasks: set[int],
                  labels: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """Slide -> (tasks done, cells labelled in them)."""
    return {slide: (sum(1 for t in task_ids if t in done_tasks),
                    sum(1 for t in task_ids if t in done_tasks for c in tiles[t].cells if c.cell_id in labels))
            for slide, task_ids in by_slide.items()}


def _thumbnail(files: DashboardFiles, settings: BackendSettings, slide_id: str):
    """The slide's thumbnail, read once from the slide file preprocessing recorded; None when unreadable."""
    cached = files.thumbnail(slide_id)
    if cached is not None:
        return cached
    try:
        slide_path, mpp = _slide_file(settings, slide_id)
        with OpenSlideReader(Path(slide_path), mpp=mpp) as reader:
            image, downsample = reader.thumbnail(MAX_SIDE_PX)
    except (AdapterError, KeyError, OSError) as exc:
        log.warning("slide %s: no thumbnail for the coverage map (%s); drawing on white", slide_id, exc)
        return None
    files.save_thumbnail(slide_id, image, downsample)
    return image, downsample


def _slide_file(settings: BackendSettings, slide_id: str) -> tuple[str, float | None]:
    """The slide file and mpp ``tasks.json`` records, parsed once per version of it: a slide without a readable
    file would otherwise have its whole ``tasks.json`` (1M cells: seconds, and a GB of JSON objects) parsed
    again by every retrain. KeyError when it records no slide file."""
    tables = tables_storage(settings)
    key = tables.location(tasks_key(slide_id))
    version = tables.version(tasks_key(slide_id))
    if key not in _SLIDE_FILES or _SLIDE_FILES[key][0] != version:
        meta = read_slide_meta(tables, slide_id, skip_tile)  # the slide's fields only: no tile kept
        _SLIDE_FILES[key] = (version, meta.get("slide_path"), meta.get("mpp"))
    _, slide_path, mpp = _SLIDE_FILES[key]
    if not slide_path:
        raise KeyError("slide_path")
    return str(slide_path), mpp


def _dashboard_url(settings: BackendSettings, gateway: LabelStudioGateway, project_id: int) -> str:
    """``HALI_PUBLIC_URL`` (the backend as browsers reach it), else the URL Label Studio connects to."""
    base = settings.public_url.rstrip("/") or next(iter(gateway.backend_urls(project_id)), "")
    return f"{base}/dashboard/{project_id}" if base else ""
