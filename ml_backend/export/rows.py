"""From Label Studio's JSON export to one :class:`CellRow` per labelled cell, in level-0 slide coordinates (pure).

A cell's row gathers every annotation that labelled it (overlap tasks have several): the annotators and
their labels, the consensus (majority; a tie goes to the latest save) and the agreement (share of
annotators who gave the consensus). ``suggestion`` is what the model showed for that cell in the prediction
the annotation started from, ``kept`` whether the annotator left it as it was. Seconds are the annotation's
``lead_time`` shared evenly over the cells it labelled. Boxes left with the neutral label ("No class yet", or
"Unclassified" in older projects) are not votes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from label_config import FROM_NAME, LEGACY_NEUTRAL_LABEL, NEUTRAL_LABEL, TileTask, region_to_slide_box_exact

_NEUTRAL = frozenset({NEUTRAL_LABEL, LEGACY_NEUTRAL_LABEL})


@dataclass(frozen=True)
class CellVote:
    """One annotation's label for one cell."""

    annotator: str
    label: str
    updated_at: str
    box: tuple[float, float, float, float]  # level-0 px (x0, y0, w, h), as the annotator left it
    suggestion: str | None
    model_version: str | None
    kept: bool | None
    seconds: float


@dataclass(frozen=True)
class CellRow:
    """One labelled cell. Coordinates: level-0 px, and um when the slide's mpp is known."""

    slide_id: str
    cell_id: str
    task_id: int
    tile_id: str
    box: tuple[float, float, float, float]  # (x0, y0, w, h) level-0 px
    mpp: float | None
    label: str  # the consensus
    agreement: float
    votes: tuple[CellVote, ...]

    @property
    def centroid_xy(self) -> tuple[float, float]:
        x0, y0, w, h = self.box
        return (x0 + w / 2.0, y0 + h / 2.0)

    @property
    def latest(self) -> CellVote:
        return max(self.votes, key=lambda v: v.updated_at)


def cell_rows(tasks: Iterable[dict[str, Any]], excluded: Sequence[str] = ()) -> list[CellRow]:
    """Rows of every labelled cell of the exported ``tasks``, in task then cell order.

    ``excluded``: labels whose cells are left out when they are the consensus (e.g. "not a nucleus").
    """
    rows = []
    for task in tasks:
        tile = TileTask.from_task_data(task["data"])
        votes: dict[str, list[CellVote]] = {}
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            for cell_id, vote in _votes(ann, task, tile):
                votes.setdefault(cell_id, []).append(vote)
        order = {c.cell_id: i for i, c in enumerate(tile.cells)}
        for cell_id in sorted(votes, key=lambda c: (order.get(c, len(order)), c)):
            row = _row(task["id"], tile, cell_id, tuple(votes[cell_id]))
            if row.label not in excluded:
                rows.append(row)
    return rows


def _votes(ann: dict[str, Any], task: dict[str, Any], tile: TileTask) -> list[tuple[str, CellVote]]:
    regions = [r for r in ann.get("result") or [] if r.get("from_name") == FROM_NAME and _label(r)
               and _label(r) not in _NEUTRAL]
    suggestions, version = _suggestions(ann, task)
    seconds = float(ann.get("lead_time") or 0.0) / max(1, len(regions))
    annotator = _annotator(ann.get("completed_by"))
    out = []
    for region in regions:
        cell_id = str(region["id"])
        origin = region.get("origin")
        kept = None if cell_id not in suggestions else (
            origin == "prediction" or (origin is None and suggestions[cell_id] == _label(region)))
        out.append((cell_id, CellVote(annotator, _label(region), str(ann.get("updated_at") or ""),
                                      region_to_slide_box_exact(region, tile), suggestions.get(cell_id), version,
                                      kept, seconds)))
    return out


def _suggestions(ann: dict[str, Any], task: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """Cell id -> suggested label of the prediction the annotation started from, and its model version."""
    prediction = ann.get("prediction") if isinstance(ann.get("prediction"), dict) else None
    parent = ann.get("parent_prediction")
    if not (prediction and prediction.get("result")) and parent is not None:
        prediction = next((p for p in task.get("predictions") or [] if p.get("id") == parent), None)
    if not prediction:
        return {}, None
    labels = {str(r["id"]): _label(r) for r in prediction.get("result") or [] if _label(r)}
    return {c: lab for c, lab in labels.items() if lab not in _NEUTRAL}, prediction.get("model_version")


def _row(task_id: int, tile: TileTask, cell_id: str, votes: tuple[CellVote, ...]) -> CellRow:
    counts = Counter(v.label for v in votes)
    top = max(counts.values())
    latest_first = sorted(votes, key=lambda v: v.updated_at, reverse=True)
    label = next(v.label for v in latest_first if counts[v.label] == top)
    box = latest_first[0].box
    return CellRow(tile.slide_id, cell_id, int(task_id), tile.tile_id, box, tile.mpp, label, top / len(votes), votes)


def _label(region: dict[str, Any]) -> str | None:
    names = (region.get("value") or {}).get(region.get("type") or "rectanglelabels") or []
    return names[0] if len(names) == 1 else None


def _annotator(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return str(completed_by)
