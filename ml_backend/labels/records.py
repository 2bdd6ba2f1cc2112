"""What annotations say about cells, and from a Label Studio annotation to an :class:`AnnotationRecord` (pure).

A record's labels are targets: a class, or "Not a nucleus" (pressed 0, or the box deleted; see
:func:`label_config.read_cell_labels`). Both count as labels: they train the model, and new ones count
towards the next retrain. :func:`label_config.nuclei_only` leaves the non-nuclei out where only nuclei count.

A record also keeps its lineage: who saved it and when, how long it took, and what the annotator was shown (the
``parent_prediction``'s model version and, per cell, the suggested class and its probability), so
:mod:`ml_backend.labels.lineage` can say per cell whether a suggestion was kept, changed or rejected.

Training uses the **consensus** of every annotation of a cell (:func:`consensus_labels`): the label most
annotators gave; a tie goes to the label of the most recent save (``updated_at``), the rule the export uses too.
``HALI_CONSENSUS=dawid-skene`` trains on :mod:`ml_backend.labels.dawid_skene`'s labels instead, which weigh each
annotator by their estimated reliability per class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from label_config import FROM_NAME, LabelSet, TileTask, read_cell_labels
from ml_backend.labels.dawid_skene import dawid_skene


@dataclass(frozen=True)
class AnnotationRecord:
    """What one annotation says: cell labels, hand-drawn boxes (level-0 px), when it was saved, and its lineage.

    ``suggested``: cell id -> ``[class, probability]`` of the prediction the annotator started from (empty when
    unknown); ``origins``: cell id -> the region's ``origin`` as Label Studio's editor set it ("prediction":
    kept as suggested, "prediction-changed", "manual"), when it did. ``lead_time`` in seconds.
    """

    task_id: int
    labels: dict[str, str]
    drawn: list[dict[str, Any]] = field(default_factory=list)
    updated_at: str = ""
    completed_by: int | None = None
    created_at: str = ""
    lead_time: float | None = None
    parent_prediction: int | None = None
    model_version: str = ""
    suggested: dict[str, list[Any]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False

    def same_labels(self, other: AnnotationRecord) -> bool:
        """Whether ``other`` says the same about the cells (labels, drawn boxes, cancelled)."""
        return (self.labels, self.drawn, self.cancelled) == (other.labels, other.drawn, other.cancelled)


def votes_by_cell(records: Mapping[int, AnnotationRecord]) -> dict[str, list[tuple[str, str]]]:
    """Cell id -> ``[(label, updated_at), ...]``, one per annotation that labelled the cell (skips give none)."""
    votes: dict[str, list[tuple[str, str]]] = {}
    for _, rec in sorted(records.items(), key=lambda kv: (kv[1].updated_at, kv[0])):
        for cell, label in rec.labels.items():
            votes.setdefault(cell, []).append((label, rec.updated_at))
    return votes


def consensus(votes: Sequence[tuple[str, str]]) -> str:
    """The majority label of ``(label, updated_at)`` votes; a tie goes to the tied label saved most recently."""
    counts = Counter(label for label, _ in votes)
    top = max(counts.values())
    return max((v for v in votes if counts[v[0]] == top), key=lambda v: v[1])[0]


CONSENSUS_RULES = ("majority", "dawid-skene")


def consensus_labels(records: Mapping[int, AnnotationRecord], rule: str = "majority") -> dict[str, str]:
    """Cell id -> the consensus class over all annotations: what training uses.

    ``rule``: "majority" (:func:`consensus`) or "dawid-skene" (:func:`~ml_backend.labels.dawid_skene.dawid_skene`
    over each annotator's latest label of the cell; an annotation without a known annotator counts as its own).
    """
    if rule == "majority":
        return {cell: consensus(votes) for cell, votes in votes_by_cell(records).items()}
    if rule == "dawid-skene":
        return {cell: label for cell, (label, _) in dawid_skene(votes_by_annotator(records)).items()}
    raise ValueError(f"unknown consensus rule {rule!r}: use one of {', '.join(CONSENSUS_RULES)}")


def votes_by_annotator(records: Mapping[int, AnnotationRecord]) -> dict[str, dict[str, str]]:
    """Cell id -> {annotator: that annotator's most recently saved label of the cell}."""
    votes: dict[str, dict[str, str]] = {}
    for ann_id, rec in sorted(records.items(), key=lambda kv: (kv[1].updated_at, kv[0])):
        who = f"user {rec.completed_by}" if rec.completed_by is not None else f"annotation {ann_id}"
        for cell, label in rec.labels.items():
            votes.setdefault(cell, {})[who] = label
    return votes


def merge_labels(records: Mapping[int, AnnotationRecord]) -> dict[str, str]:
    """Alias of :func:`consensus_labels` (a single annotation per cell: its label)."""
    return consensus_labels(records)


def count_conflicts(records: Mapping[int, AnnotationRecord]) -> int:
    """Cells whose annotators gave more than one distinct label."""
    return sum(1 for votes in votes_by_cell(records).values() if len({label for label, _ in votes}) > 1)


def count_changed(old: Mapping[str, str], new: Mapping[str, str]) -> int:
    """Cells labelled in ``new`` that ``old`` did not label, or labelled differently."""
    return sum(1 for cell, label in new.items() if old.get(cell) != label)


def annotation_record(
    task_id: int, tile: TileTask, result: list[dict[str, Any]], labels: LabelSet, cancelled: bool,
    updated_at: str, from_prediction: bool = False, **lineage: Any,
) -> tuple[AnnotationRecord, tuple[str, ...]]:
    """The record of one annotation and the problems found in it (a skipped task labels nothing).

    ``from_prediction``: the annotation has a ``parent_prediction`` (the annotator saw HALI's boxes, so a
    box missing from ``result`` was deleted: "Not a nucleus"). ``lineage``: the other :class:`AnnotationRecord`
    fields (``completed_by``, ``created_at``, ``lead_time``, ``parent_prediction``, ``model_version``,
    ``suggested``).
    """
    if cancelled:
        return AnnotationRecord(task_id, {}, [], updated_at, cancelled=True, **lineage), ()
    read = read_cell_labels(result, tile, labels, from_prediction)
    drawn = [{"box": list(box), "label": label, "region_id": rid} for box, label, rid in read.drawn]
    origins = {str(r.get("id")): str(r["origin"]) for r in result if r.get("origin") and r.get("id") in read.labels}
    return AnnotationRecord(task_id, read.labels, drawn, updated_at, origins=origins, **lineage), read.problems


def record_from_annotation(
    ann: Mapping[str, Any], task_id: int, tile: TileTask, labels: LabelSet,
    predictions: Sequence[Mapping[str, Any]] = (),
) -> tuple[AnnotationRecord, tuple[str, ...]]:
    """The record of one annotation as Label Studio lists it; ``predictions``: the task's, to find the parent's
    model version and suggestions (a parent already deleted leaves them unknown)."""
    parent = ann.get("parent_prediction")
    shown = next((p for p in predictions if parent is not None and p.get("id") == parent), None)
    lineage = {
        "completed_by": _user_id(ann.get("completed_by")), "created_at": str(ann.get("created_at") or ""),
        "lead_time": None if ann.get("lead_time") is None else float(ann["lead_time"]),
        "parent_prediction": None if parent is None else int(parent),
        "model_version": str((shown or {}).get("model_version") or ""), "suggested": suggestions_of(shown or {}),
    }
    return annotation_record(task_id, tile, ann.get("result") or [], labels, bool(ann.get("was_cancelled")),
                             str(ann.get("updated_at") or ""), parent is not None, **lineage)


def suggestions_of(prediction: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Cell id -> ``[class, probability or None]`` of a prediction's regions."""
    out: dict[str, list[Any]] = {}
    for region in prediction.get("result") or []:
        names = (region.get("value") or {}).get(region.get("type") or "") or []
        if region.get("from_name") == FROM_NAME and len(names) == 1:
            score = region.get("score")
            out[str(region.get("id"))] = [names[0], None if score is None else float(score)]
    return out


def records_from_tasks(
    tasks: Sequence[dict[str, Any]], tiles: Mapping[int, TileTask], labels: LabelSet
) -> dict[int, AnnotationRecord]:
    """Records of every annotation of ``tasks`` (as listed by the gateway), keyed by annotation id."""
    records: dict[int, AnnotationRecord] = {}
    for task in tasks:
        for ann in task["annotations"]:
            rec, _ = record_from_annotation(ann, task["id"], tiles[task["id"]], labels, task.get("predictions") or ())
            records[int(ann["id"])] = rec
    return records


def _user_id(completed_by: Any) -> int | None:
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id")
    try:
        return None if completed_by is None else int(completed_by)
    except (TypeError, ValueError):
        return None
