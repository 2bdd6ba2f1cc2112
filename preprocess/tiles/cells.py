"""The cell table of one slide: ids, boxes, tiles and embeddings, saved as one ``.npz``.

Ids are deterministic, so re-running preprocessing on the same slide gives the same ids:
a cell id is ``<slide id[:10]>-<round(cx)>-<round(cy)>`` (level-0 centroid), and a tile id is
``<slide id[:10]>-t<col>-<row>`` (grid indices of :class:`preprocess.tiles.tiling.TilePlan`), with ``-<part>``
for a part of a square that held too many cells, and ``f`` instead of ``t`` for a focused task.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from adapters.atomic import write_atomic

_FIELDS = ("cell_ids", "boxes", "tile_ids", "features")


def make_cell_id(slide_id: str, cx: float, cy: float) -> str:
    """Cell id from the slide id and the level-0 centroid (x = column, y = row)."""
    return f"{slide_id[:10]}-{round(cx)}-{round(cy)}"


def make_tile_id(slide_id: str, col: int, row: int, part: int = 0, focused: bool = False) -> str:
    """Tile id from the slide id, the tile's (col, row) grid indices and its part (0: the whole square).

    Focused tasks (``focused``) get ``f`` instead of ``t``: their grid is finer, so the same (col, row)
    names another place, and a project that switches mode must not take one for the other.
    """
    kind = "f" if focused else "t"
    return f"{slide_id[:10]}-{kind}{col}-{row}" + (f"-{part}" if part else "")


@dataclass(frozen=True, eq=False)
class CellTable:
    """Every cell of a slide.

    ``cell_ids``: str (N,). ``boxes``: int32 (N, 4) level-0 (x0, y0, w, h). ``tile_ids``: str (N,), the
    tile holding each cell. ``features``: float32 (N, D) embeddings.
    """

    cell_ids: np.ndarray
    boxes: np.ndarray
    tile_ids: np.ndarray
    features: np.ndarray

    def __post_init__(self) -> None:
        # Fixed-width unicode arrays save without pickle; object arrays would not.
        object.__setattr__(self, "cell_ids", np.asarray(self.cell_ids, dtype=str).reshape(-1))
        object.__setattr__(self, "tile_ids", np.asarray(self.tile_ids, dtype=str).reshape(-1))
        object.__setattr__(self, "boxes", np.asarray(self.boxes, dtype=np.int32).reshape(-1, 4))
        object.__setattr__(self, "features", np.asarray(self.features, dtype=np.float32))
        if self.features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {self.features.shape}")
        lengths = {name: len(getattr(self, name)) for name in _FIELDS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"cell table fields have different lengths {lengths}; give one row per cell")

    def __len__(self) -> int:
        return len(self.cell_ids)

    def index_of(self, cell_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """int64 row of each id in ``cell_ids``; :class:`KeyError` naming the first unknown id.

        A binary search in the ids' sort order: no dictionary of every id (at 1M cells one takes 150 MB).
        """
        wanted = np.asarray(cell_ids, dtype=str).reshape(-1)
        if not len(wanted):
            return np.zeros(0, np.int64)
        order = self._id_order
        rows = order[np.minimum(np.searchsorted(self.cell_ids, wanted, sorter=order), len(order) - 1)] \
            if len(order) else np.zeros(len(wanted), np.int64)
        unknown = (self.cell_ids[rows] != wanted) if len(order) else np.ones(len(wanted), bool)
        if unknown.any():
            first = str(wanted[np.argmax(unknown)])
            raise KeyError(f"cell id {first!r} is not in this slide's cell table of {len(self)} cells")
        return rows.astype(np.int64, copy=False)

    @cached_property
    def _id_order(self) -> np.ndarray:
        """int64 (N,): the rows in the order of their cell ids."""
        return np.argsort(self.cell_ids, kind="stable").astype(np.int64, copy=False)

    def save(self, path: str | Path) -> None:
        """Write the table to ``path`` (.npz), atomically: a reader sees the old file or the new one."""
        write_atomic(path, lambda fh: np.savez(fh, **{name: getattr(self, name) for name in _FIELDS}))

    @classmethod
    def load(cls, path: str | Path) -> CellTable:
        """Read a table written by :meth:`save`, each array straight from the file (no copy of the whole file)."""
        return cls._from_npz(path, str(path))

    def to_bytes(self) -> bytes:
        """The table as ``.npz`` bytes (no pickle), for object storage."""
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(self, name) for name in _FIELDS})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "cell table") -> CellTable:
        """Parse :meth:`to_bytes` output; ``source`` names where it came from in error messages."""
        return cls._from_npz(io.BytesIO(data), source)

    @classmethod
    def _from_npz(cls, file: str | Path | io.BytesIO, source: str) -> CellTable:
        with np.load(file, allow_pickle=False) as npz:
            missing = [name for name in _FIELDS if name not in npz.files]
            if missing:
                raise ValueError(f"{source} is not a cell table: fields {missing} are missing; re-run `hali preprocess`")
            return cls(**{name: npz[name] for name in _FIELDS})
