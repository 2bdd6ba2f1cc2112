"""What a project manager wants to know, from the label mirror's annotation records (pure).

One :class:`AnnotationFact` per submitted annotation (who, when, how long, which prediction it started from,
its cell labels, and how many of the model's suggestions it kept or changed); the figures of the dashboard
are functions of them:

- :func:`labels_per_hour`: per annotator, cell labels per hour of labelling time (Label Studio's ``lead_time``);
- :func:`acceptance_by_version`: per model version, suggestions kept (region ``origin: "prediction"``) and
  changed (``"prediction-changed"``, or the box deleted);
- :func:`agreement`: Cohen's kappa where one cell has labels from two annotators (overlap tasks);
- :func:`progress`: tasks and cells done per slide, labels per class.

Times are Unix seconds (float); durations seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any

from sklearn.metrics import cohen_kappa_score

from label_config import NOT_NUCLEUS_LABEL, TileTask
from ml_backend.labels.tile_store import cell_counts, slide_ids


@dataclass(frozen=True)
class AnnotationFact:
    """One submitted (not skipped) annotation. ``labels``: cell id -> target (a class or "Not a nucleus")."""

    annotation_id: int
    task_id: int
    slide_id: str
    annotator: str
    saved_s: float  # Unix seconds of the last save
    lead_time_s: float
    prediction_id: int | None  # the prediction the annotator started from (``parent_prediction``)
    labels: dict[str, str]
    kept: int  # suggestions left as shown
    changed: int  # suggestions relabelled, moved or deleted


def facts_from_records(records: Mapping[int, Any], tiles: Mapping[int, TileTask],
                       names: Mapping[int, str] | None = None) -> list[AnnotationFact]:
    """Facts of every submitted annotation in the label mirror (annotation id -> ``AnnotationRecord``).

    Kept and changed come from the regions' ``origin`` the record kept; a box deleted from a task that showed
    a prediction (its cell labelled "Not a nucleus" with no region left) counts as changed.
    """
    names = names or {}
    facts = []
    for aid, rec in records.items():
        if rec.cancelled or rec.task_id not in tiles:
            continue
        kept = sum(1 for c in rec.labels if rec.origins.get(c) == "prediction")
        changed = sum(1 for c in rec.labels if rec.origins.get(c) == "prediction-changed")
        if rec.parent_prediction is not None:
            changed += sum(1 for c, lab in rec.labels.items() if lab == NOT_NUCLEUS_LABEL and c not in rec.origins)
        user = rec.completed_by
        facts.append(AnnotationFact(
            int(aid), rec.task_id, tiles[rec.task_id].slide_id,
            names.get(user, f"user {user}") if user is not None else "?",
            iso_seconds(rec.updated_at or rec.created_at), float(rec.lead_time or 0.0), rec.parent_prediction,
            dict(rec.labels), kept, changed))
    return facts


def iso_seconds(value: Any) -> float:
    """Unix seconds of an ISO 8601 time as Label Studio writes it (``2026-12-01T03:04:05.123Z``); 0 if absent."""
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0


def labels_per_hour(facts: Iterable[AnnotationFact]) -> dict[str, dict[str, Any]]:
    """Per annotator: ``labels`` (cell labels), ``annotations``, ``hours`` (sum of lead times) and
    ``labels_per_hour`` (labels / hours; None without any lead time)."""
    out: dict[str, dict[str, Any]] = {}
    for f in facts:
        row = out.setdefault(f.annotator, {"labels": 0, "annotations": 0, "seconds": 0.0})
        row["labels"] += len(f.labels)
        row["annotations"] += 1
        row["seconds"] += max(0.0, f.lead_time_s)
    for row in out.values():
        seconds = row.pop("seconds")
        row["hours"] = round(seconds / 3600.0, 4)
        row["labels_per_hour"] = round(row["labels"] * 3600.0 / seconds, 1) if seconds > 0 else None
    return dict(sorted(out.items()))


def version_at(saved_s: float, versions: Sequence[tuple[float, str]]) -> str | None:
    """The model version live at ``saved_s``: the last of ``versions`` ((created Unix s, name), sorted) created
    at or before it; None before the first."""
    i = bisect.bisect_right([t for t, _ in versions], saved_s)
    return versions[i - 1][1] if i else None


def annotation_versions(facts: Iterable[AnnotationFact], prediction_versions: Mapping[int, str],
                        versions: Sequence[tuple[float, str]]) -> dict[int, str | None]:
    """Annotation id -> the model version whose suggestions it started from: its parent prediction's version
    when known, else the version live when the annotator opened the task (save time minus lead time)."""
    return {f.annotation_id: prediction_versions.get(f.prediction_id) if f.prediction_id in prediction_versions
            else version_at(f.saved_s - f.lead_time_s, versions) for f in facts}


def acceptance_by_version(facts: Iterable[AnnotationFact], version_of: Mapping[int, str | None],
                          no_model: Sequence[str] = ("hali-v0000",)) -> dict[str, dict[str, Any]]:
    """Per model version (sorted): ``annotations``, ``kept``, ``changed`` and ``kept_share`` (kept / both; None
    when no suggestion was judged). ``no_model``: versions whose boxes carried no class (left out)."""
    out: dict[str, dict[str, Any]] = {}
    for f in facts:
        version = version_of.get(f.annotation_id)
        if version is None or version in no_model or f.kept + f.changed == 0:
            continue
        row = out.setdefault(version, {"annotations": 0, "kept": 0, "changed": 0})
        row["annotations"] += 1
        row["kept"] += f.kept
        row["changed"] += f.changed
    for row in out.values():
        row["kept_share"] = round(row["kept"] / (row["kept"] + row["changed"]), 4)
    return dict(sorted(out.items()))


def kept_share(acceptance: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Share of all judged suggestions that were kept, over every version of ``acceptance``."""
    kept = sum(r["kept"] for r in acceptance.values())
    judged = kept + sum(r["changed"] for r in acceptance.values())
    return round(kept / judged, 4) if judged else None


def cohens_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items (equal length), by scikit-learn; None for no
    items, 1.0 when both raters used one and the same label throughout (where scikit-learn's is undefined)."""
    if len(a) != len(b):
        raise ValueError(f"kappa needs two label lists of one length, got {len(a)} and {len(b)}")
    if not a:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(cohen_kappa_score(list(a), list(b)))


def agreement(facts: Iterable[AnnotationFact], min_cells: int = 1) -> dict[str, Any]:
    """Agreement where annotators labelled the same cells (overlap tasks).

    Each annotator's latest label per cell; ``cells``: cells with two or more annotators; ``kappa``: Cohen's
    kappa pooled over every annotator pair of those cells; ``pairs``: per pair with at least ``min_cells``
    shared cells, ``{"a", "b", "cells", "kappa", "agree"}`` (agree: share of identical labels).
    """
    by_cell: dict[str, dict[str, tuple[float, str]]] = {}
    for f in facts:
        for cell, label in f.labels.items():
            votes = by_cell.setdefault(cell, {})
            if f.annotator not in votes or votes[f.annotator][0] <= f.saved_s:
                votes[f.annotator] = (f.saved_s, label)
    pooled_a, pooled_b, per_pair = [], [], {}
    n_cells = 0
    for votes in by_cell.values():
        if len(votes) < 2:
            continue
        n_cells += 1
        for x, y in combinations(sorted(votes), 2):
            pooled_a.append(votes[x][1])
            pooled_b.append(votes[y][1])
            pair = per_pair.setdefault((x, y), ([], []))
            pair[0].append(votes[x][1])
            pair[1].append(votes[y][1])
    pairs = [{"a": x, "b": y, "cells": len(la), "kappa": _round(cohens_kappa(la, lb)),
              "agree": round(sum(p == q for p, q in zip(la, lb)) / len(la), 4)}
             for (x, y), (la, lb) in sorted(per_pair.items()) if len(la) >= min_cells]
    return {"cells": n_cells, "kappa": _round(cohens_kappa(pooled_a, pooled_b)), "pairs": pairs}


def progress(tiles: Mapping[int, TileTask], done_task_ids: Iterable[int], labels: Mapping[str, str],
             targets: Sequence[str]) -> dict[str, Any]:
    """Per slide ``{"tasks", "tasks_done", "cells", "cells_labelled", "per_class"}`` and the same summed over
    slides; ``labels`` is the merged cell id -> target of the project."""
    done = set(done_task_ids)
    slides: dict[str, dict[str, Any]] = {}
    # slide and cell count of every task without building its tile: a worker's tiles are a TileStore
    for task_id, slide_id, n_cells in zip(tiles, slide_ids(tiles), cell_counts(tiles, tiles).tolist()):
        row = slides.setdefault(slide_id, {"tasks": 0, "tasks_done": 0, "cells": 0, "cells_labelled": 0,
                                           "per_class": dict.fromkeys(targets, 0)})
        row["tasks"] += 1
        row["cells"] += n_cells
        if task_id not in done:
            continue
        row["tasks_done"] += 1
        for cell in tiles[task_id].cells:
            label = labels.get(cell.cell_id)
            if label in row["per_class"]:
                row["cells_labelled"] += 1
                row["per_class"][label] += 1
    total = {"tasks": 0, "tasks_done": 0, "cells": 0, "cells_labelled": 0, "per_class": dict.fromkeys(targets, 0)}
    for row in slides.values():
        for key in ("tasks", "tasks_done", "cells", "cells_labelled"):
            total[key] += row[key]
        for label, n in row["per_class"].items():
            total["per_class"][label] += n
    return {"slides": dict(sorted(slides.items())), "total": total}


def labels_over_time(facts: Iterable[AnnotationFact], max_points: int = 200) -> dict[str, list[list[float]]]:
    """Per annotator, ``[[Unix s, cumulative labels], ...]`` in time order, thinned to at most ``max_points``."""
    series: dict[str, list[list[float]]] = {}
    for f in sorted(facts, key=lambda f: f.saved_s):
        points = series.setdefault(f.annotator, [])
        points.append([f.saved_s, (points[-1][1] if points else 0) + len(f.labels)])
    return {who: _thin(points, max_points) for who, points in sorted(series.items())}


def _thin(points: list[list[float]], max_points: int) -> list[list[float]]:
    if len(points) <= max_points:
        return points
    step = len(points) / max_points
    return [points[int(i * step)] for i in range(max_points - 1)] + [points[-1]]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
