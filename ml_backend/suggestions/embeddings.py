"""EmbeddingIndex: the frozen backbone's features of every preprocessed cell, by cell id.

Reads the cell tables ``hali preprocess`` wrote (one per slide) from the output storage (``HALI_DATA_DIR``,
or S3 with ``HALI_STORAGE_URL``) and keeps them in memory. A cached table is checked against the stored
object's version (mtime or ETag) at most every ``recheck_s`` seconds, so a long-lived predictor picks up a
re-run of preprocessing without one S3 request per task.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from adapters.storage import Storage, open_output_storage
from label_config import TileTask
from ml_backend.errors import NotPreprocessedError, UnknownCellError
from ml_backend.settings import BackendSettings
from preprocess.layout import cells_key, read_cell_table
from preprocess.tiles.cells import CellTable


def tables_storage(settings: BackendSettings) -> Storage:
    """Where the backend reads cell tables and ``tasks.json``: the storage ``hali preprocess`` wrote them to."""
    return open_output_storage(settings.storage_url, settings.data_dir, settings.ls_files_root,
                               settings.s3_endpoint_url).tables


class EmbeddingIndex:
    def __init__(self, storage: Storage, recheck_s: float = 5.0) -> None:
        self._storage = storage
        self._recheck_s = recheck_s
        self._tables: dict[str, tuple[str, float, CellTable]] = {}  # slide -> (version, checked at, table)

    def table(self, slide_id: str) -> CellTable:
        cached = self._tables.get(slide_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self._recheck_s:
            return cached[2]
        version = self._storage.version(cells_key(slide_id))
        if version is None:
            raise NotPreprocessedError(
                f"slide {slide_id} has no cell table at {self._storage.location(cells_key(slide_id))}; run "
                "`hali preprocess` for it with the same HALI_DATA_DIR / HALI_STORAGE_URL as the backend"
            )
        table = cached[2] if cached is not None and cached[0] == version else read_cell_table(self._storage, slide_id)
        self._tables[slide_id] = (version, now, table)
        return table

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
