"""Pure arithmetic of the replay: boxes -> ground truth, the annotator's answers, the time model, the totals.

Coordinates are level-0 pixels of the source image (x column, y row). A box's truth is the class of the
nearest ground-truth centroid within ``max_dist_px`` of the box centre, or None: not a nucleus. Costs use
:class:`ml_backend.simulation.efficiency.TimeModel` exactly as ``hali simulate`` does: a task with no class
suggestion costs ``task_cost(n, None)`` (unassisted); one with suggestions ``task_cost(n, n_wrong)``, where
every box whose suggestion is not what the annotator submits is wrong (a box still unclassified, or a
non-nucleus the annotator must delete, costs a click too).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ml_backend.simulation.efficiency import TimeModel

NOT_NUCLEUS = "not a nucleus"  # the truth of a box with no ground-truth nucleus near its centre, in reports


def match_boxes(centres_xy: np.ndarray, gt_xy: np.ndarray, max_dist_px: float) -> np.ndarray:
    """(B,) int64: the index of the nearest of ``gt_xy`` (G, 2) to each of ``centres_xy`` (B, 2) within
    ``max_dist_px`` (inclusive), or -1. Not one-to-one: two boxes on one nucleus both match it."""
    centres_xy, gt_xy = np.asarray(centres_xy, float).reshape(-1, 2), np.asarray(gt_xy, float).reshape(-1, 2)
    if not len(gt_xy) or not len(centres_xy):
        return np.full(len(centres_xy), -1, np.int64)
    d2 = ((centres_xy[:, None, :] - gt_xy[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    return np.where(d2[np.arange(len(nearest)), nearest] <= max_dist_px ** 2, nearest, -1).astype(np.int64)


def map_class(raw: str, class_map: dict[str, str] | None) -> str:
    """``raw`` through a ``--classes-map`` (``*`` catches the rest); unchanged without a map."""
    if class_map is None:
        return raw
    if raw in class_map:
        return class_map[raw]
    if "*" in class_map:
        return class_map["*"]
    raise KeyError(f"class {raw!r} is not in the classes map {class_map} and it has no '*'")


def map_classes(class_map: dict[str, str] | None, raw_classes: Sequence[str]) -> list[str]:
    """The project's classes: the map's targets in order of first appearance (``*``'s last), or the raw ones."""
    if class_map is None:
        return list(raw_classes)
    named = [t for r, t in class_map.items() if r != "*"] + [class_map.get("*", "")]
    return [c for i, c in enumerate(named) if c and c not in named[:i]]


@dataclass(frozen=True)
class TaskAnswer:
    """What the annotator did on one task. ``submitted[i]`` is the label sent for box i, or None when the
    box was deleted (a non-nucleus without a reserved label)."""

    submitted: tuple[str | None, ...]
    n_suggested: int  # boxes that showed a class (or the reserved non-nucleus label)
    n_kept: int  # of those, the ones submitted unchanged
    n_wrong: int | None  # boxes that needed an action; None: no suggestion shown (unassisted)
    cost: float
    unassisted_cost: float


def answer_task(shown: Sequence[str | None], truth: Sequence[str | None], not_nucleus_label: str | None,
                time_model: TimeModel = TimeModel()) -> TaskAnswer:
    """The oracle's answer to boxes labelled ``shown`` (None: the neutral label, no suggestion) whose truth
    is ``truth`` (None: not a nucleus). Non-nuclei get ``not_nucleus_label``, or are deleted when it is None."""
    submitted = tuple(t if t is not None else not_nucleus_label for t in truth)
    suggested = [s is not None for s in shown]
    kept = sum(1 for s, sub in zip(shown, submitted, strict=True) if s is not None and s == sub)
    n = len(shown)
    n_wrong = None if not any(suggested) else n - kept
    return TaskAnswer(submitted, sum(suggested), kept, n_wrong, time_model.task_cost(n, n_wrong),
                      time_model.task_cost(n, None))


@dataclass(frozen=True)
class TaskRecord:
    """One served task, for the table and the JSON."""

    rank: int
    task_id: int
    source: str
    model_version: str | None
    stale: bool  # served while a submitted label was not yet in any model
    n_boxes: int
    n_nuclei: int
    n_duplicates: int  # boxes whose nucleus another box of the slide also matched
    n_missed: int  # ground-truth nuclei inside the tile that no box of the slide matched
    n_suggested: int
    n_kept: int
    n_wrong: int | None
    cost: float
    unassisted_cost: float
    truth: dict[str, int] = field(default_factory=dict)  # class -> boxes (NOT_NUCLEUS included)


def summarize(records: Sequence[TaskRecord], pool_truth: Counter, lags_s: Sequence[float | None]
              ) -> dict[str, object]:
    """Totals over the walk: shares, speed-ups (as ``hali simulate``'s ``summarize_replay``), class mixes, lags."""
    boxes = sum(r.n_boxes for r in records)
    shown = [r for r in records if r.n_wrong is not None]
    cost, base = sum(r.cost for r in records), sum(r.unassisted_cost for r in records)
    shown_cost = sum(r.cost for r in shown)
    labelled: Counter = Counter()
    for r in records:
        labelled.update(r.truth)
    measured = [x for x in lags_s if x is not None]
    pool_n = sum(pool_truth.values())
    return {
        "tasks": len(records), "boxes": boxes, "nuclei_share": _share(sum(r.n_nuclei for r in records), boxes),
        "duplicate_boxes": sum(r.n_duplicates for r in records), "missed_nuclei": sum(r.n_missed for r in records),
        "suggested": sum(r.n_suggested for r in records), "kept": sum(r.n_kept for r in records),
        "kept_share_of_boxes": _share(sum(r.n_kept for r in records), boxes),
        "kept_share_of_assisted_boxes": _share(sum(r.n_kept for r in shown), sum(r.n_boxes for r in shown)),
        "assisted_tasks": len(shown),
        "cost": cost, "unassisted_cost": base, "speedup": base / cost if cost else None,
        "speedup_assisted": sum(r.unassisted_cost for r in shown) / shown_cost if shown_cost else None,
        "labelled_mix": {c: _share(n, boxes) for c, n in labelled.most_common()},
        "pool_mix": {c: _share(n, pool_n) for c, n in pool_truth.most_common()},
        "sources": len({r.source for r in records}),
        "stale_tasks": sum(r.stale for r in records),
        "retrain_lag_median_s": statistics.median(measured) if measured else None,
        "retrain_lag_max_s": max(measured) if measured else None,
        "retrain_lag_unmeasured": len(lags_s) - len(measured),
    }


def retrain_lags(submit_times: Sequence[float], change_times: Sequence[float]) -> list[float | None]:
    """For each submit, seconds until the project's model version next changed (None: it never did)."""
    changes = sorted(change_times)
    out: list[float | None] = []
    for t in submit_times:
        later = [c for c in changes if c > t]
        out.append(later[0] - t if later else None)
    return out


def is_stale(served_at: float, submit_times: Sequence[float], change_times: Sequence[float]) -> bool:
    """Whether a task served at ``served_at`` came under a model older than the last submit before it."""
    before = [t for t in submit_times if t < served_at]
    return bool(before) and not any(max(before) < c <= served_at for c in change_times)


def record_dict(record: TaskRecord) -> dict[str, object]:
    return asdict(record)


def _share(n: int, total: int) -> float | None:
    return n / total if total else None
