"""Keeping the Redis label mirror equal to Label Studio, at a cost bounded by what changed.

Webhooks write the mirror as annotators save (:meth:`RedisLabelStore.record`), but Label Studio sends them once,
with a 1 s timeout, and a backend or Redis that is down loses them. Two reconciles catch up:

- :func:`reconcile_incremental` lists only the tasks Label Studio updated after the mirror's sync mark (saving
  or deleting an annotation updates its task; importing predictions does not) that hold an annotation, with
  their annotations, data and predictions, in pages; and at the same time, lean, those older than the mark that
  hold none any more (a last annotation deleted). Tasks imported since the mark are not listed. (A task imported
  inside the window whose only annotation is deleted inside it too is left to the webhook and the next full
  reconcile.) It runs before every retrain and on the worker's
  schedule (``HALI_RECONCILE_S``).
- :func:`reconcile_full` lists every task with its annotations (no data), reads in full only the tasks whose
  annotations differ from the mirror, and also drops the annotations of deleted tasks. It runs when a worker
  starts, when a project has no sync mark, and every ``HALI_FULL_RECONCILE_S``.

The sync mark is a time such that every save Label Studio stamped no later than it has been read: the wall time
when a reconcile started minus :data:`MARK_MARGIN_S`, which covers a save whose transaction committed a little
after it was stamped and a clock difference between this machine and Label Studio's of up to about that much
(a larger one is caught by the next full reconcile). So a read lists the tasks saved in the last
:data:`MARK_MARGIN_S` seconds again (reading a task twice changes nothing), and a big import leaves the window
that long after it. Both return a :class:`ReconcileReport`; ``changed`` counts cell labels new, changed or
removed, which the scheduled reconcile adds to the pending count (a retrain does not: its changes
are trained on at once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.label_studio import LabelStudioGateway
from label_config import LabelSet, TileTask
from ml_backend.labels.records import AnnotationRecord, record_from_annotation
from ml_backend.labels.redis_store import RedisLabelStore

log = logging.getLogger(__name__)

MARK_MARGIN_S = 30.0
_ANNOTATION_FIELDS = "annotations,result,was_cancelled,completed_by,lead_time,parent_prediction,created_at,updated_at"
_LEAN_FIELDS = f"id,overlap,{_ANNOTATION_FIELDS}"
# the tasks that lost their last annotation: their ids alone (no "annotations" field, so one that gains an
# annotation between the filter and the listing is never mistaken for a task to read in full without its data)
_ID_FIELDS = "id,overlap"
_FULL_FIELDS = f"id,data,overlap,{_ANNOTATION_FIELDS},predictions,model_version,score"


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconcile found: tasks read in full, annotations written or removed, cell labels changed."""

    project_id: int
    kind: str  # "incremental" | "full"
    tasks_read: int
    written: int
    removed: int
    changed: int
    mark: str | None
    task_ids: frozenset[int] | None = None  # full only: every task of the project


def reconcile_incremental(project_id: int, gateway: LabelStudioGateway, store: RedisLabelStore,
                          labels: LabelSet, count_pending: bool = False,
                          margin_s: float = MARK_MARGIN_S) -> ReconcileReport:
    """Read the tasks updated since the sync mark into the mirror (a full reconcile when there is no mark)."""
    mark, started = store.sync_mark(project_id), datetime.now(UTC)
    if mark is None:
        return reconcile_full(project_id, gateway, store, labels, count_pending, margin_s)
    # The window also holds every task imported in the last MARK_MARGIN_S seconds: listing 5,000 of them took
    # 12 s (docs/predictions.md). So list the updated tasks that hold an annotation, in full, and, at the same
    # time and lean, the older ones that hold none any more (their last annotation deleted).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hali-emptied") as pool:
        emptied = pool.submit(lambda: list(gateway.list_tasks(project_id, _ID_FIELDS, updated_after=mark,
                                                              created_before=mark, annotated=False)))
        tasks = [*gateway.list_tasks(project_id, _FULL_FIELDS, updated_after=mark, annotated=True),
                 *emptied.result()]
    mirror = store.records(project_id)
    upserts, removed = _task_changes(tasks, mirror, labels)
    changed = store.apply(project_id, upserts, removed)
    store.set_overlaps(project_id, {int(t["id"]): int(t.get("overlap") or 1) for t in tasks})
    new_mark = max(_parse(mark), started - timedelta(seconds=margin_s)).isoformat()
    store.set_sync_mark(project_id, new_mark)
    if count_pending:
        store.add_pending(project_id, changed)
    return ReconcileReport(project_id, "incremental", len(tasks), len(upserts), len(removed), changed, new_mark)


def reconcile_full(project_id: int, gateway: LabelStudioGateway, store: RedisLabelStore, labels: LabelSet,
                   count_pending: bool = False, margin_s: float = MARK_MARGIN_S) -> ReconcileReport:
    """Make the mirror equal to Label Studio: every task listed lean, the ones that differ read in full."""
    started = datetime.now(UTC)
    mirror = store.records(project_id)
    # One pass over the listing, page by page, keeping ids only: at 1M cells the 50,000 listed tasks held in a
    # list took the worker's memory past 2 GB before its first retrain.
    stale, listed, overlaps = [], set(), {}
    for task in gateway.list_tasks(project_id, _LEAN_FIELDS + ",updated_at"):
        task_id = int(task["id"])
        overlaps[task_id] = int(task.get("overlap") or 1)
        listed.update(int(a["id"]) for a in task.get("annotations") or [])
        if _differs(task, mirror):
            stale.append(task_id)
    mirror = store.records(project_id)  # read again after the listing, as before it was streamed
    full = list(gateway.list_tasks(project_id, _FULL_FIELDS, task_ids=stale)) if stale else []
    upserts, _ = _task_changes(full, mirror, labels)
    removed = sorted(set(mirror) - listed)
    changed = store.apply(project_id, upserts, removed)
    store.set_overlaps(project_id, overlaps, replace=True)
    mark = (started - timedelta(seconds=margin_s)).isoformat()
    store.set_sync_mark(project_id, mark, full=True)
    if count_pending:
        store.add_pending(project_id, changed)
    return ReconcileReport(project_id, "full", len(full), len(upserts), len(removed), changed, mark,
                           frozenset(overlaps))


def _task_changes(tasks: Iterable[Mapping[str, Any]], mirror: Mapping[int, AnnotationRecord], labels: LabelSet
                  ) -> tuple[dict[int, AnnotationRecord], list[int]]:
    """Records of ``tasks``' annotations that differ from ``mirror``, and mirror annotations of these tasks that
    Label Studio no longer has (deleted)."""
    upserts: dict[int, AnnotationRecord] = {}
    seen: set[int] = set()
    task_ids = set()
    for task in tasks:
        task_id = int(task["id"])
        task_ids.add(task_id)
        tile = TileTask.from_task_data(task["data"]) if task.get("annotations") else None
        for ann in task.get("annotations") or []:
            ann_id = int(ann["id"])
            seen.add(ann_id)
            rec, problems = record_from_annotation(ann, task_id, tile, labels, task.get("predictions") or ())
            if problems:
                log.warning("task %s annotation %s: %s", task_id, ann_id, "; ".join(problems))
            old = mirror.get(ann_id)
            if old is None or _keep_lineage(old, rec) != old:
                upserts[ann_id] = _keep_lineage(old, rec) if old is not None else rec
    removed = [a for a, rec in mirror.items() if rec.task_id in task_ids and a not in seen]
    return upserts, removed


def _keep_lineage(old: AnnotationRecord, new: AnnotationRecord) -> AnnotationRecord:
    """``new``, keeping what ``old`` knew of the suggestion shown when the parent prediction is gone now."""
    if new.suggested or not old.suggested or old.parent_prediction != new.parent_prediction:
        return new
    return replace(new, suggested=old.suggested, model_version=old.model_version or new.model_version)


def _differs(task: Mapping[str, Any], mirror: Mapping[int, AnnotationRecord]) -> bool:
    """Whether a task's listed annotations (ids and save times) differ from what the mirror holds of them."""
    for ann in task.get("annotations") or []:
        rec = mirror.get(int(ann["id"]))
        if rec is None or rec.task_id != int(task["id"]) or rec.updated_at != str(ann.get("updated_at") or ""):
            return True
    return False


def _parse(iso: str) -> datetime:
    when = datetime.fromisoformat(iso)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
