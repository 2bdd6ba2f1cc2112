"""Per-cell lineage and consensus from the label mirror's records (pure).

:func:`cell_labels` gives one :class:`CellLabel` per cell and annotation: who labelled it, when, in how long,
what the model suggested (class, probability, model version) and what the annotator did with it:

========== ==================================================================================
kept       left the suggestion as it was (region ``origin`` "prediction", or the same class)
changed    gave another class (``origin`` "prediction-changed", or another class than suggested)
rejected   said "Not a nucleus" to a suggested class (pressed 0, or deleted the box)
labelled   gave a class where no suggestion is known (the first model, or the prediction is gone)
drawn      drew the box by hand
========== ==================================================================================

:func:`cell_consensus` gives one :class:`CellConsensus` per cell: the label training uses (majority; a tie goes
to the most recent save, :func:`ml_backend.labels.records.consensus`), the share of annotators who gave it, and
whether they disagreed (a conflict).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from label_config import LEGACY_NEUTRAL_LABEL, NEUTRAL_LABEL, NOT_NUCLEUS_LABEL
from ml_backend.labels.records import AnnotationRecord, consensus, votes_by_cell

ACTIONS = ("kept", "changed", "rejected", "labelled", "drawn")
_NEUTRAL = frozenset({NEUTRAL_LABEL, LEGACY_NEUTRAL_LABEL})


@dataclass(frozen=True)
class CellLabel:
    """One annotation's label for one cell (``cell_id`` is the drawn region's id for a hand-drawn box).

    ``seconds``: the annotation's lead time shared evenly over the cells it labelled; times are Label Studio's ISO.
    """

    cell_id: str
    task_id: int
    annotation_id: int
    annotator: int | None
    label: str
    action: str
    suggested: str | None
    probability: float | None
    model_version: str
    created_at: str
    updated_at: str
    seconds: float | None


@dataclass(frozen=True)
class CellConsensus:
    cell_id: str
    label: str
    n_annotators: int
    agreement: float  # share of the cell's annotations that gave ``label``
    conflict: bool


def action_of(label: str, suggested: str | None, origin: str | None = None) -> str:
    """What an annotator did with a suggestion (:data:`ACTIONS` but "drawn"); ``suggested`` None: none known."""
    if origin == "prediction" or (suggested is not None and label == suggested):
        return "kept"
    if suggested is None and origin != "prediction-changed":
        return "labelled"
    return "rejected" if label == NOT_NUCLEUS_LABEL else "changed"


def cell_labels(records: Mapping[int, AnnotationRecord]) -> list[CellLabel]:
    """Every annotation's label of every cell, by annotation id then cell id."""
    rows = []
    for ann_id, rec in sorted(records.items()):
        n = len(rec.labels) + len(rec.drawn)
        seconds = None if rec.lead_time is None or not n else rec.lead_time / n
        for cell_id, label in sorted(rec.labels.items()):
            suggested, proba = (rec.suggested.get(cell_id) or [None, None])[:2]
            suggested = None if suggested in _NEUTRAL else suggested
            rows.append(CellLabel(cell_id, rec.task_id, ann_id, rec.completed_by, label,
                                  action_of(label, suggested, rec.origins.get(cell_id)), suggested,
                                  proba if suggested is not None else None, rec.model_version, rec.created_at,
                                  rec.updated_at, seconds))
        rows.extend(CellLabel(str(d.get("region_id", "")), rec.task_id, ann_id, rec.completed_by, d["label"], "drawn",
                              None, None, rec.model_version, rec.created_at, rec.updated_at, seconds)
                    for d in rec.drawn)
    return rows


def cell_consensus(records: Mapping[int, AnnotationRecord]) -> list[CellConsensus]:
    """The consensus of every labelled cell, by cell id."""
    out = []
    for cell_id, votes in sorted(votes_by_cell(records).items()):
        label = consensus(votes)
        counts = Counter(v for v, _ in votes)
        out.append(CellConsensus(cell_id, label, len(votes), counts[label] / len(votes), len(counts) > 1))
    return out


def action_counts(rows: list[CellLabel]) -> dict[str, int]:
    """How many cell labels each action produced, in :data:`ACTIONS` order."""
    counts = Counter(r.action for r in rows)
    return {a: counts.get(a, 0) for a in ACTIONS}
