"""Task data: one Label Studio task is one tile of a slide with its cells.

Coordinates are level-0 slide pixels (``x0`` = column, ``y0`` = row of the top-left corner). The tile image
shown in Label Studio covers ``width * downsample`` x ``height * downsample`` level-0 pixels from
``(x0, y0)``; ``width, height`` are the PNG's own size in pixels. ``downsample`` is ``tile_mpp / mpp`` (a 40x
scan shown at 0.5 um/px has 2.0), and ``image`` may also be ``s3://bucket/prefix/hali/...`` (S3 storage).

Task data as stored in Label Studio (``task["data"]``)::

    {"image": "/data/local-files/?d=hali/<slide>/<tile>-<tag>.png", "slide_id": "...", "tile_id": "...",
     "x0": 1024, "y0": 2048, "width": 256, "height": 256, "downsample": 2.0, "mpp": 0.25,
     "cells": [{"id": "<cell id>", "x0": 1030, "y0": 2050, "w": 14, "h": 12}, ...]}

Optional: ``"mark": "keypoint"`` when the project marks cells with a dot at their centre instead of a box
(absent: ``"rectangle"``, which every task made before marks were configurable has).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from label_config.errors import TaskDataError

Mark = Literal["rectangle", "keypoint"]
MARKS: tuple[str, ...] = ("rectangle", "keypoint")


@dataclass(frozen=True, slots=True)  # slots: a million cells of a slide's tiles take 200 MB less
class CellBox:
    """A nucleus' bounding box in level-0 slide pixels; ``cell_id`` is stable across re-runs."""

    cell_id: str
    x0: int
    y0: int
    w: int
    h: int

    @property
    def centroid_xy(self) -> tuple[float, float]:
        """Box centre (x, y) in level-0 pixels."""
        return (self.x0 + self.w / 2.0, self.y0 + self.h / 2.0)


@dataclass(frozen=True, slots=True)
class TileTask:
    """One tile of a slide and the cells it holds (each cell belongs to exactly one tile)."""

    tile_id: str
    slide_id: str
    image: str
    x0: int
    y0: int
    width: int
    height: int
    downsample: float
    mpp: float | None
    cells: tuple[CellBox, ...]
    mark: Mark = "rectangle"  # how Label Studio shows each cell: a box, or a dot at its centre

    def to_task_data(self) -> dict[str, Any]:
        """The ``data`` dict of a Label Studio task."""
        data = {
            "image": self.image,
            "slide_id": self.slide_id,
            "tile_id": self.tile_id,
            "x0": self.x0,
            "y0": self.y0,
            "width": self.width,
            "height": self.height,
            "downsample": self.downsample,
            "mpp": self.mpp,
            "cells": [{"id": c.cell_id, "x0": c.x0, "y0": c.y0, "w": c.w, "h": c.h} for c in self.cells],
        }
        return data if self.mark == "rectangle" else {**data, "mark": self.mark}

    @classmethod
    def from_task_data(cls, data: dict[str, Any]) -> TileTask:
        """Parse a task's ``data``; raises :class:`TaskDataError` naming the bad field."""
        try:
            m = _TaskDataModel.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise TaskDataError(
                f"task data field {where!r}: {first['msg']}; was this task made by `hali preprocess`?"
            ) from exc
        cells = tuple(CellBox(c.id, c.x0, c.y0, c.w, c.h) for c in m.cells)
        return cls(m.tile_id, m.slide_id, m.image, m.x0, m.y0, m.width, m.height, m.downsample, m.mpp, cells, m.mark)


class _CellModel(BaseModel):
    id: str
    x0: int
    y0: int
    w: int = Field(gt=0)
    h: int = Field(gt=0)


class _TaskDataModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str
    slide_id: str
    tile_id: str
    x0: int
    y0: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    downsample: float = Field(gt=0)
    mpp: float | None = None
    cells: list[_CellModel]
    mark: Mark = "rectangle"
