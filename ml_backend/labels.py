"""From a Label Studio annotation to an :class:`AnnotationRecord` (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from label_config import TileTask, read_cell_labels
from ml_backend.label_store import AnnotationRecord


def annotation_record(
    task_id: int, tile: TileTask, result: list[dict[str, Any]], classes: Sequence[str], cancelled: bool,
    updated_at: str,
) -> tuple[AnnotationRecord, tuple[str, ...]]:
    """The record of one annotation and the problems found in it (a skipped task labels nothing)."""
    if cancelled:
        return AnnotationRecord(task_id, {}, [], updated_at), ()
    read = read_cell_labels(result, tile, classes)
    drawn = [{"box": list(box), "label": label, "region_id": rid} for box, label, rid in read.drawn]
    return AnnotationRecord(task_id, read.labels, drawn, updated_at), read.problems


def records_from_tasks(
    tasks: Sequence[dict[str, Any]], tiles: dict[int, TileTask], classes: Sequence[str]
) -> dict[int, AnnotationRecord]:
    """Records of every annotation of ``tasks`` (as listed by the gateway), keyed by annotation id."""
    records: dict[int, AnnotationRecord] = {}
    for task in tasks:
        for ann in task["annotations"]:
            rec, _ = annotation_record(
                task["id"], tiles[task["id"]], ann.get("result") or [], classes,
                bool(ann.get("was_cancelled")), str(ann.get("updated_at") or ""),
            )
            records[int(ann["id"])] = rec
    return records
