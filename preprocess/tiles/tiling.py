"""Tiling: cut a slide's cells into square tiles of about ``cells_per_task`` cells each.

The grid is anchored at level-0 pixel (0, 0), so a tile's (col, row) and origin depend only on the
tile side, and each cell belongs to exactly one tile: the grid square holding its centroid. Tiles are
numbered in reading order (row by row, left to right), the order a pathologist would follow unaided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Square tiles over a slide, in level-0 pixels.

    ``tile_px``: side of every tile. ``tile_origins``: int64 (T, 2) top-left (x0, y0) of each tile.
    ``grid``: int64 (T, 2) (col, row) grid indices, so ``tile_origins == grid * tile_px``.
    ``tile_index``: int64 (N,) the tile (row of ``tile_origins``) of each cell.
    """

    tile_px: int
    tile_origins: np.ndarray
    tile_index: np.ndarray
    grid: np.ndarray

    def __len__(self) -> int:
        return len(self.tile_origins)

    def cells_of(self, tile: int) -> np.ndarray:
        """int64 indices of the cells in tile number ``tile``, in input order."""
        return np.flatnonzero(self.tile_index == tile)


def plan_tiles(
    centroids_xy: np.ndarray, cells_per_task: int, min_tile_px: int = 96, max_tile_px: int = 1024
) -> TilePlan:
    """Tile plan whose non-empty tiles hold ``cells_per_task`` cells on average.

    ``centroids_xy``: float (N, 2) level-0 (x, y) of each cell. The tile side is searched in
    [``min_tile_px``, ``max_tile_px``] over the actual centroids (a side at a bound means the target
    cannot be reached: cells too dense or too sparse). Empty grid squares are not tiles, and a square
    with fewer than a third of ``cells_per_task`` cells (a tissue edge) joins its nearest full neighbour,
    so no task asks a pathologist to open a tile for one or two cells.
    """
    if cells_per_task < 1:
        raise ValueError(f"cells_per_task is {cells_per_task}; it must be >= 1, e.g. 30 cells per task")
    if not 1 <= min_tile_px <= max_tile_px:
        raise ValueError(f"tile side bounds [{min_tile_px}, {max_tile_px}] px must satisfy 1 <= min <= max")
    xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    tile_px = _choose_side(xy, cells_per_task, min_tile_px, max_tile_px)
    return _merge_small_tiles(_grid_plan(xy, tile_px), min_cells=max(1, cells_per_task // 3))


def mean_cells_per_tile(centroids_xy: np.ndarray, tile_px: int) -> float:
    """Mean cell count of the non-empty squares of a ``tile_px`` grid anchored at (0, 0)."""
    if len(centroids_xy) == 0:
        return 0.0
    return len(centroids_xy) / len(np.unique(_grid_cells(centroids_xy, tile_px), axis=0))


def _choose_side(xy: np.ndarray, target: float, low: int, high: int) -> int:
    """Side in [low, high] whose mean cells per tile is closest to ``target`` (in ratio)."""
    if len(xy) == 0 or mean_cells_per_tile(xy, low) >= target:
        return low
    if mean_cells_per_tile(xy, high) <= target:
        return high
    # The mean grows with the side (up to grid-alignment noise), so bisect, then keep the better end.
    while high - low > 1:
        mid = (low + high) // 2
        if mean_cells_per_tile(xy, mid) < target:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda side: abs(np.log(mean_cells_per_tile(xy, side) / target)))


def _grid_plan(xy: np.ndarray, tile_px: int) -> TilePlan:
    cells = _grid_cells(xy, tile_px)
    # Sorting unique (row, col) pairs gives reading order.
    row_col, tile_index = np.unique(cells[:, ::-1], axis=0, return_inverse=True)
    grid = row_col[:, ::-1].reshape(-1, 2)
    return TilePlan(tile_px, grid * tile_px, tile_index.reshape(-1).astype(np.int64), grid)


def _grid_cells(xy: np.ndarray, tile_px: int) -> np.ndarray:
    """int64 (N, 2) (col, row) of the grid square holding each centroid."""
    return np.floor(xy / tile_px).astype(np.int64).reshape(-1, 2)


def _merge_small_tiles(plan: TilePlan, min_cells: int) -> TilePlan:
    """Move the cells of tiles holding fewer than ``min_cells`` into the nearest of the 8 neighbouring
    tiles that hold enough; a small tile with no such neighbour stays as it is."""
    counts = np.bincount(plan.tile_index, minlength=len(plan))
    small = np.flatnonzero(counts < min_cells)
    big = np.flatnonzero(counts >= min_cells)
    if len(small) == 0 or len(big) == 0:
        return plan
    target = np.arange(len(plan))
    for t in small:
        offset = plan.grid[big] - plan.grid[t]
        near = np.abs(offset).max(axis=1) <= 1
        if near.any():
            candidates = big[near]
            target[t] = candidates[np.argmin((offset[near] ** 2).sum(axis=1))]
    keep, tile_index = np.unique(target[plan.tile_index], return_inverse=True)
    return TilePlan(plan.tile_px, plan.tile_origins[keep], tile_index.reshape(-1).astype(np.int64), plan.grid[keep])
