"""EmbeddingIndex: the frozen backbone's features of every preprocessed cell, by cell id.

Reads the cell tables ``hali preprocess`` wrote (one per slide) and keeps them in memory, reloading a
table when its file changes.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from label_config import TileTask
from ml_backend.errors import NotPreprocessedError, UnknownCellError
from preprocess.cells import CellTable
from preprocess.layout import DataLayout


class EmbeddingIndex:
    def __init__(self, layout: DataLayout) -> None:
        self._layout = layout
        self._tables: dict[str, tuple[float, CellTable]] = {}

    def table(self, slide_id: str) -> CellTable:
        path = self._layout.cells_path(slide_id)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise NotPreprocessedError(
                f"slide {slide_id} has no cell table at {path}; run `hali preprocess` for it with the same "
                "HALI_DATA_DIR as the backend"
            ) from None
        cached = self._tables.get(slide_id)
        if cached is None or cached[0] != mtime:
            cached = (mtime, CellTable.load(path))
            self._tables[slide_id] = cached
        return cached[1]

    def features(self, slide_id: str, cell_ids: Sequence[str]) -> np.ndarray:
        """float32 (len(cell_ids), D) features of these cells of one slide."""
        table = self.table(slide_id)
        try:
            return table.features[table.index_of(list(cell_ids))]
        except KeyError as exc:
            raise UnknownCellError(
                f"slide {slide_id} has no cell {exc.args[0]!r}; the task was not made from this data dir's "
                "cell table (re-run `hali preprocess` or point HALI_DATA_DIR at the right folder)"
            ) from None

    def tile_features(self, tile: TileTask) -> np.ndarray:
        return self.features(tile.slide_id, [c.cell_id for c in tile.cells])

