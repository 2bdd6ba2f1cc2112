"""Tiling: cut a slide's cells into groups (tasks) of about ``cells_per_task`` cells each.

The grid is anchored at level-0 pixel (0, 0), so a tile's (col, row) and origin depend only on the
tile side, and each cell belongs to exactly one tile: the grid square holding its centroid (or, for a
square with a few cells at a tissue edge, a full neighbour's). A square holding more than ``max_cells``
(dense tissue: 128 cells where 20 were asked for) is cut into about ``n / cells_per_task`` compact parts
of nearly equal size by halving along its longer axis, so every task is bounded. Tiles are numbered in
reading order (row by row, left to right, then part), the order a pathologist would follow unaided.
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
    ``part``: int64 (T,) 0 for a whole grid square, 1..k for the k parts of a square that held too many cells.
    """

    tile_px: int
    tile_origins: np.ndarray
    tile_index: np.ndarray
    grid: np.ndarray
    part: np.ndarray | None = None

    def __post_init__(self) -> None:
        part = np.zeros(len(self.grid), np.int64) if self.part is None else np.asarray(self.part, np.int64)
        object.__setattr__(self, "part", part.reshape(-1))

    def __len__(self) -> int:
        return len(self.tile_origins)

    def cells_of(self, tile: int) -> np.ndarray:
        """int64 indices of the cells in tile number ``tile``, in input order."""
        return np.flatnonzero(self.tile_index == tile)


def plan_tiles(
    centroids_xy: np.ndarray, cells_per_task: int, min_tile_px: int = 96, max_tile_px: int = 1024,
    max_cells: int | None = None,
) -> TilePlan:
    """Tile plan whose non-empty tiles hold ``cells_per_task`` cells on average and at most ``max_cells``.

    ``centroids_xy``: float (N, 2) level-0 (x, y) of each cell. The tile side is searched in
    [``min_tile_px``, ``max_tile_px``] over the actual centroids (a side at a bound means the target
    cannot be reached: cells too dense or too sparse). Empty grid squares are not tiles, and a square
    with fewer than a third of ``cells_per_task`` cells (a tissue edge) joins its nearest full neighbour,
    so no task asks a pathologist to open a tile for one or two cells. A tile left with more than
    ``max_cells`` (default ``ceil(1.5 * cells_per_task)``) is split into parts of about ``cells_per_task``.
    """
    if cells_per_task < 1:
        raise ValueError(f"cells_per_task is {cells_per_task}; it must be >= 1, e.g. 30 cells per task")
    if not 1 <= min_tile_px <= max_tile_px:
        raise ValueError(f"tile side bounds [{min_tile_px}, {max_tile_px}] px must satisfy 1 <= min <= max")
    max_cells = max_cells if max_cells is not None else -(-3 * cells_per_task // 2)
    if max_cells < cells_per_task:
        raise ValueError(f"max_cells {max_cells} is below cells_per_task {cells_per_task}; give max >= target")
    xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    tile_px = choose_tile_side(xy, cells_per_task, min_tile_px, max_tile_px)
    merged = _merge_small_tiles(_grid_plan(xy, tile_px), min_cells=max(1, cells_per_task // 3))
    return _split_big_tiles(merged, xy, cells_per_task, max_cells)


def choose_tile_side(xy: np.ndarray, cells_per_task: float, min_tile_px: int = 96, max_tile_px: int = 1024) -> int:
    """Level-0 side in [min, max] of the grid squares that hold ``cells_per_task`` cells on average."""
    return _choose_side(np.asarray(xy, np.float64).reshape(-1, 2), cells_per_task, min_tile_px, max_tile_px)


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


def _split_big_tiles(plan: TilePlan, xy: np.ndarray, target: int, max_cells: int) -> TilePlan:
    """Cut every tile of more than ``max_cells`` cells into about ``n / target`` compact parts (rounded, so the
    mean stays near the target; more when a part would still exceed ``max_cells``)."""
    counts = np.bincount(plan.tile_index, minlength=len(plan))
    if len(plan) == 0 or counts.max() <= max_cells:
        return plan
    new_index = np.empty_like(plan.tile_index)
    origins, grid, part = [], [], []
    for t in range(len(plan)):
        members = plan.cells_of(t)
        k = 1 if counts[t] <= max_cells else max(2, round(counts[t] / target), -(-int(counts[t]) // max_cells))
        for p, piece in enumerate(_bisect(members, xy, k)):
            new_index[piece] = len(origins)
            origins.append(plan.tile_origins[t])
            grid.append(plan.grid[t])
            part.append(0 if k == 1 else p + 1)
    return TilePlan(plan.tile_px, np.array(origins, np.int64).reshape(-1, 2), new_index,
                    np.array(grid, np.int64).reshape(-1, 2), np.array(part, np.int64))


def _bisect(members: np.ndarray, xy: np.ndarray, k: int) -> list[np.ndarray]:
    """``members`` (cell indices) in ``k`` parts of nearly equal size, halving along the longer axis of
    their spread each time, so every part is a compact patch; parts in reading order of their halves."""
    if k <= 1:
        return [members]
    pts = xy[members]
    axis = int(np.ptp(pts[:, 1]) > np.ptp(pts[:, 0]))  # 0: cut along x (columns), 1: along y (rows)
    order = members[np.lexsort((pts[:, 1 - axis], pts[:, axis]))]
    k_first = k // 2
    cut = round(len(members) * k_first / k)
    return _bisect(order[:cut], xy, k_first) + _bisect(order[cut:], xy, k - k_first)
