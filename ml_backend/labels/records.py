"""What annotations say about cells, and from a Label Studio annotation to an :class:`AnnotationRecord` (pure).

A record's labels are targets: a class, or "Not a nucleus" (pressed 0, or the box deleted; see
:func:`label_config.read_cell_labels`). Both count as labels: they train the model, and new ones count
towards the next retrain. :func:`label_config.nuclei_only` leaves the non-nuclei out where only nuclei count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from label_config import LabelSet, TileTask, read_cell_labels


@dataclass(frozen=True)
class AnnotationRecord:
    """What one annotation says: cell labels, hand-drawn boxes (level-0 px) and when it was last saved."""

    task_id: int
    labels: dict[str, str]
    drawn: list[dict[str, Any]] = field(default_factory=list)
    updated_at: str = ""


def merge_labels(records: Mapping[int, AnnotationRecord]) -> dict[str, str]:
    """Cell id -> class over all annotations; where two annotations label one cell, the later save wins."""
    labels: dict[str, str] = {}
    for _, rec in sorted(records.items(), key=lambda kv: (kv[1].updated_at, kv[0])):
        labels.update(rec.labels)
    return labels


def count_changed(old: Mapping[str, str], new: Mapping[str, str]) -> int:
    """Cells labelled in ``new`` that ``old`` did not label, or labelled differently."""
    return sum(1 for cell, label in new.items() if old.get(cell) != label)


def annotation_record(
    task_id: int, tile: TileTask, result: list[dict[str, Any]], labels: LabelSet, cancelled: bool,
    updated_at: str, from_prediction: bool = False,
) -> tuple[AnnotationRecord, tuple[str, ...]]:
    """The record of one annotation and the problems found in it (a skipped task labels nothing).

    ``from_prediction``: the annotation has a ``parent_prediction`` (the annotator saw HALI's boxes, so a
    box missing from ``result`` was deleted: "Not a nucleus").
    """
    if cancelled:
        return AnnotationRecord(task_id, {}, [], updated_at), ()
    read = read_cell_labels(result, tile, labels, from_prediction)
    drawn = [{"box": list(box), "label": label, "region_id": rid} for box, label, rid in read.drawn]
    return AnnotationRecord(task_id, read.labels, drawn, updated_at), read.problems


def records_from_tasks(
    tasks: Sequence[dict[str, Any]], tiles: dict[int, TileTask], labels: LabelSet
) -> dict[int, AnnotationRecord]:
    """Records of every annotation of ``tasks`` (as listed by the gateway), keyed by annotation id."""
    records: dict[int, AnnotationRecord] = {}
    for task in tasks:
        for ann in task["annotations"]:
            rec, _ = annotation_record(
                task["id"], tiles[task["id"]], ann.get("result") or [], labels,
                bool(ann.get("was_cancelled")), str(ann.get("updated_at") or ""),
                ann.get("parent_prediction") is not None,
            )
            records[int(ann["id"])] = rec
    return records
