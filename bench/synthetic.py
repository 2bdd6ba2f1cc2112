"""A synthetic preprocessed slide for the benches: tiles of cells with class-clustered features.

Not a bench itself. Features are ``K`` gaussian classes in ``d`` dimensions (centres ``sep / sqrt(d)``
apart per coordinate, unit noise), so a head learns them to about 90% accuracy, like real embeddings;
the classes' sizes can be skewed to exercise the minority oversampling. Cells sit on a grid inside
square tiles of level-0 pixels; every tile becomes one Label Studio task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from label_config import CellBox, TileTask
from preprocess.layout import DataLayout
from preprocess.tiles.cells import CellTable

CLASSES = ["Tumor", "Lymphocyte", "Stroma", "Other"]
TILE_PX = 1024
CELL_PX = 12


@dataclass(frozen=True)
class SyntheticSlide:
    """``features`` float32 (N, d), ``y`` int64 (N,) true class, ``tile_of_cell`` int (N,) index into ``tiles``.

    The cells of tile ``i`` are the contiguous rows ``i * cells_per_tile ...``.
    """

    slide_id: str
    features: np.ndarray
    y: np.ndarray
    tile_of_cell: np.ndarray
    tiles: list[TileTask]

    def save_cell_table(self, layout: DataLayout) -> Path:
        """Write the slide's cell table and its ``tasks.json`` (every tile's task data, from which a retrain
        builds the tiles) where the backend looks for them, as ``hali preprocess`` does; returns the table's path."""
        ids = [c.cell_id for t in self.tiles for c in t.cells]
        boxes = np.array([[c.x0, c.y0, c.w, c.h] for t in self.tiles for c in t.cells], dtype=np.int32)
        tile_ids = [t.tile_id for t in self.tiles for _ in t.cells]
        path = layout.cells_path(self.slide_id)
        CellTable(np.array(ids), boxes, np.array(tile_ids), self.features).save(path)
        meta = {"slide_id": self.slide_id, "tiles": [t.to_task_data() for t in self.tiles]}
        layout.tasks_path(self.slide_id).write_text(json.dumps(meta))
        return path


def make_slide(n_cells: int, dims: int, cells_per_tile: int = 200, seed: int = 0, sep: float = 3.0,
               class_shares: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1), slide_id: str = "bench-slide") -> SyntheticSlide:
    """``n_cells`` cells (a multiple of ``cells_per_tile`` is rounded up to) with ``dims``-d features."""
    n_tiles = -(-n_cells // cells_per_tile)
    n = n_tiles * cells_per_tile
    rng = np.random.default_rng(seed)
    centres = (rng.normal(size=(len(class_shares), dims)) * sep / np.sqrt(dims)).astype(np.float32)
    y = rng.choice(len(class_shares), size=n, p=np.asarray(class_shares) / sum(class_shares))
    features = rng.standard_normal((n, dims), dtype=np.float32)
    features += centres[y]
    tiles = [_tile(slide_id, i, cells_per_tile) for i in range(n_tiles)]
    return SyntheticSlide(slide_id, features, y.astype(np.int64), np.repeat(np.arange(n_tiles), cells_per_tile), tiles)


def _tile(slide_id: str, index: int, n_cells: int) -> TileTask:
    x0, y0 = (index % 64) * TILE_PX, (index // 64) * TILE_PX
    per_row = int(np.ceil(np.sqrt(n_cells)))
    step = TILE_PX // per_row
    cells = tuple(CellBox(f"{slide_id}-{index}-{j}", x0 + (j % per_row) * step, y0 + (j // per_row) * step,
                          CELL_PX, CELL_PX) for j in range(n_cells))
    return TileTask(f"{slide_id}-t{index}", slide_id, f"/data/local-files/?d=tiles/{index}.png", x0, y0,
                    TILE_PX, TILE_PX, 1.0, 0.25, cells)
