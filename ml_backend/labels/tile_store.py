"""A project's tiles as a worker keeps them: task id -> :class:`TileTask`, the cells held as arrays.

At 1M cells, 50,000 :class:`TileTask` objects with their million :class:`CellBox` objects and cell-id strings
take about 450 MB of a worker's memory for as long as it keeps the project. :class:`TileStore` keeps each
tile's own fields (a :class:`TileTask` without cells) and every cell in three arrays: ids as UTF-8 bytes, boxes
int32 (N, 4) level-0 (x0, y0, w, h), and where each task's cells start, about 50 MB. ``store[task_id]`` builds
the task's :class:`TileTask` when asked (about 20 us for 20 cells), so the code that reads a few tiles (those
with labels, the top of the queue) is unchanged; code that needs every task reads :func:`slide_ids` and
:func:`cell_counts`, which a plain dict of tiles answers too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from label_config import CellBox, TileTask


@dataclass(frozen=True, slots=True)
class PackedTile:
    """One tile as a :class:`TileStore` keeps it: ``head`` the tile with no cells, ``cell_ids`` UTF-8 bytes (n,),
    ``boxes`` int32 (n, 4) level-0 (x0, y0, w, h)."""

    head: TileTask
    cell_ids: np.ndarray
    boxes: np.ndarray

    @classmethod
    def of(cls, tile: TileTask) -> PackedTile:
        return cls(dataclasses.replace(tile, cells=()),
                   np.array([c.cell_id.encode() for c in tile.cells], dtype=bytes),
                   np.array([(c.x0, c.y0, c.w, c.h) for c in tile.cells], np.int32).reshape(-1, 4))

    @classmethod
    def from_task_data(cls, data: dict[str, Any]) -> PackedTile:
        """A task's ``data`` (:meth:`TileTask.from_task_data`, which validates it), packed: a
        :func:`preprocess.layout.read_slide_meta` ``tile_hook``."""
        return cls.of(TileTask.from_task_data(data))


class TileStore(Mapping[int, TileTask]):
    """Task id -> tile, in the order given; read-only. Build with :meth:`from_tiles`."""

    def __init__(self, heads: dict[int, TileTask], cell_ids: np.ndarray, boxes: np.ndarray,
                 starts: np.ndarray) -> None:
        """``heads``: task id -> its tile with no cells; ``cell_ids`` bytes (N,), ``boxes`` int32 (N, 4),
        ``starts`` int64 (T + 1,): the cells of the i-th task of ``heads`` are rows ``starts[i]:starts[i + 1]``."""
        self._heads = heads
        self._position = {task_id: i for i, task_id in enumerate(heads)}
        self._cell_ids, self._boxes, self._starts = cell_ids, boxes, starts

    @classmethod
    def from_tiles(cls, tiles: Iterable[tuple[int, TileTask | PackedTile]]) -> TileStore:
        """A store of ``(task id, tile)`` pairs, read one at a time (a generator holds one tile at a time)."""
        heads: dict[int, TileTask] = {}
        ids: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        for task_id, tile in tiles:
            packed = tile if isinstance(tile, PackedTile) else PackedTile.of(tile)
            heads[int(task_id)] = packed.head
            ids.append(packed.cell_ids)
            boxes.append(packed.boxes)
        sizes = np.array([len(i) for i in ids], np.int64)
        return cls(heads, np.concatenate(ids) if ids else np.zeros(0, bytes),
                   np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int32), np.r_[0, np.cumsum(sizes)])

    def __getitem__(self, task_id: int) -> TileTask:
        head = self._heads[task_id]
        i = self._position[task_id]
        first, end = int(self._starts[i]), int(self._starts[i + 1])
        cells = tuple(CellBox(cell_id.decode(), x0, y0, w, h)
                      for cell_id, (x0, y0, w, h) in zip(self._cell_ids[first:end].tolist(),
                                                         self._boxes[first:end].tolist()))
        return dataclasses.replace(head, cells=cells)

    def __iter__(self) -> Iterator[int]:
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._heads

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TileStore):
            return Mapping.__eq__(self, other)
        return (self._heads == other._heads and np.array_equal(self._starts, other._starts)
                and np.array_equal(self._cell_ids, other._cell_ids) and np.array_equal(self._boxes, other._boxes))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking like a dict: never a key

    def without(self, task_ids: Iterable[int]) -> TileStore:
        """The store less ``task_ids`` (deleted tasks)."""
        gone = set(task_ids) & self._heads.keys()
        if not gone:
            return self
        kept = np.array([t not in gone for t in self._heads], bool)
        sizes = np.diff(self._starts)
        rows = np.repeat(kept, sizes)
        return TileStore({t: h for t, h in self._heads.items() if t not in gone}, self._cell_ids[rows],
                         self._boxes[rows], np.r_[0, np.cumsum(sizes[kept])])

    def slide_ids(self) -> list[str]:
        """The slide id of every task, in the store's order."""
        return [h.slide_id for h in self._heads.values()]

    def cell_spans(self, task_ids: Iterable[int]) -> np.ndarray:
        """Level-0 (x0, y0, x1, y1) (T, 4) float64 around each task's cells; the task's window when it has none."""
        at = np.fromiter((self._position[t] for t in task_ids), np.int64)
        heads = list(self._heads.values())
        spans = np.array([(h.x0, h.y0, h.x0 + h.width * h.downsample, h.y0 + h.height * h.downsample)
                          for h in (heads[i] for i in at.tolist())], np.float64).reshape(-1, 4)
        sizes = np.diff(self._starts)[at]
        own = at[sizes > 0]
        if len(own):
            every = self._cell_spans()
            spans[sizes > 0] = every[own]
        return spans

    def _cell_spans(self) -> np.ndarray:
        """(T, 4) spans of every task's cells in store order (rows of tasks with no cell are meaningless)."""
        b = self._boxes.astype(np.int64)
        nonempty = np.flatnonzero(np.diff(self._starts) > 0)
        out = np.zeros((len(self._heads), 4), np.float64)
        if len(nonempty):
            first = self._starts[nonempty]
            out[nonempty, 0] = np.minimum.reduceat(b[:, 0], first)
            out[nonempty, 1] = np.minimum.reduceat(b[:, 1], first)
            out[nonempty, 2] = np.maximum.reduceat(b[:, 0] + b[:, 2], first)
            out[nonempty, 3] = np.maximum.reduceat(b[:, 1] + b[:, 3], first)
        return out

    def cell_counts(self, task_ids: Iterable[int]) -> np.ndarray:
        """int64: how many cells each of ``task_ids`` holds."""
        at = np.fromiter((self._position[t] for t in task_ids), np.int64)
        return self._starts[at + 1] - self._starts[at]


def slide_ids(tiles: Mapping[int, TileTask]) -> list[str]:
    """The slide id of every task of ``tiles``, in its order, without building a store's tiles."""
    if isinstance(tiles, TileStore):
        return tiles.slide_ids()
    return [t.slide_id for t in tiles.values()]


def cell_counts(tiles: Mapping[int, TileTask], task_ids: Iterable[int]) -> np.ndarray:
    """int64: how many cells each of ``task_ids`` holds, without building a store's tiles."""
    if isinstance(tiles, TileStore):
        return tiles.cell_counts(task_ids)
    return np.fromiter((len(tiles[t].cells) for t in task_ids), np.int64)


def without(tiles: Mapping[int, TileTask], task_ids: Iterable[int]) -> Mapping[int, TileTask]:
    """``tiles`` less ``task_ids``."""
    if isinstance(tiles, TileStore):
        return tiles.without(task_ids)
    gone = set(task_ids)
    return {t: tile for t, tile in tiles.items() if t not in gone}
