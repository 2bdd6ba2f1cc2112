"""Regions: the unit of work of slide-scale preprocessing (pure: no I/O).

A slide's tissue windows (:func:`preprocess.nuclei.segment.tissue_windows`, cores of ``window_px`` anchored at
level-0 (0, 0)) are grouped into regions: the squares of a coarser grid of ``region_px`` (a whole number of
windows) anchored at (0, 0) as well. A region's id is its (col, row) on that grid, so the same slide, tissue
mask and sizes always give the same regions. A nucleus belongs to the window whose core holds its centroid,
and each window to one region, so every nucleus belongs to exactly one region.

A region is segmented and embedded on its own (:class:`RegionCells`, bounded memory whatever the slide's
size); :func:`merge_region_cells` puts the regions of a slide back together in the order a single pass over
the whole slide gives, and :func:`build_cell_table` cuts the merged cells into tiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from preprocess.tiles.cells import CellTable, make_cell_id, make_tile_id
from preprocess.tiles.tiling import plan_tiles

Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class Region:
    """A square of the region grid that holds tissue windows.

    ``region_id``: ``c<col>-r<row>`` on the grid of ``region_px`` squares. ``windows``: the level-0
    ``(x0, y0, width, height)`` window cores it holds, in reading order.
    """

    region_id: str
    windows: tuple[Window, ...]

    @property
    def area_px(self) -> int:
        """Level-0 pixels of its window cores (what segmentation reads, margins aside)."""
        return sum(w * h for _, _, w, h in self.windows)


def plan_regions(windows: Iterable[Window], window_px: int, region_windows: int) -> list[Region]:
    """Regions of ``region_windows`` x ``region_windows`` windows, in reading order of the region grid.

    ``windows``: level-0 ``(x0, y0, width, height)`` cores whose origins are multiples of ``window_px``.
    """
    if region_windows < 1:
        raise ValueError(f"region_windows {region_windows} must be >= 1, e.g. 2 for 2 x 2 windows per region")
    region_px = window_px * region_windows
    groups: dict[tuple[int, int], list[Window]] = {}
    for window in windows:
        x0, y0 = window[0], window[1]
        if x0 % window_px or y0 % window_px:
            raise ValueError(f"window origin ({x0}, {y0}) is not on the {window_px} px window grid")
        groups.setdefault((y0 // region_px, x0 // region_px), []).append(tuple(int(v) for v in window))
    return [Region(f"c{col}-r{row}", tuple(sorted(groups[row, col], key=lambda w: (w[1], w[0]))))
            for row, col in sorted(groups)]


@dataclass(frozen=True, eq=False)
class RegionCells:
    """The cells of one region (or of several merged), in level-0 pixels.

    ``centroids_xy``: float64 (N, 2) (x = column, y = row). ``boxes``: int32 (N, 4) (x0, y0, w, h).
    ``features``: float32 (N, D) embeddings of each cell's patch.
    """

    centroids_xy: np.ndarray
    boxes: np.ndarray
    features: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "centroids_xy", np.asarray(self.centroids_xy, np.float64).reshape(-1, 2))
        object.__setattr__(self, "boxes", np.asarray(self.boxes, np.int32).reshape(-1, 4))
        object.__setattr__(self, "features", np.asarray(self.features, np.float32))
        if self.features.ndim != 2 or not len(self.centroids_xy) == len(self.boxes) == len(self.features):
            raise ValueError(
                f"region cells need N centroids (N, 2), boxes (N, 4) and features (N, D); got shapes "
                f"{self.centroids_xy.shape}, {self.boxes.shape}, {self.features.shape}"
            )

    def __len__(self) -> int:
        return len(self.centroids_xy)


def merge_region_cells(parts: Sequence[RegionCells]) -> RegionCells:
    """All cells of ``parts`` sorted by (y, x) of their centroids, as one pass over the slide orders them.

    Parts must be of disjoint regions (a cell in two parts would appear twice) and share the feature size D.
    """
    if not parts:
        raise ValueError("no region parts to merge; a slide with tissue has at least one region")
    dims = {p.features.shape[1] for p in parts}
    if len(dims) != 1:
        raise ValueError(f"region parts have different feature sizes {sorted(dims)}; they were made with "
                         "different featurizers: delete the slide's parts folder and preprocess it again")
    xy = np.concatenate([p.centroids_xy for p in parts])
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    return RegionCells(xy[order], np.concatenate([p.boxes for p in parts])[order],
                       np.concatenate([p.features for p in parts])[order])


def build_cell_table(slide_id: str, cells: RegionCells, cells_per_task: int, focused: bool = False) -> CellTable:
    """The slide's :class:`CellTable`: cells grouped by tile (task), tiles in reading order.

    Tiles come from :func:`preprocess.tiles.tiling.plan_tiles` over every centroid of the slide, so a tile never
    depends on how the slide was cut into regions. ``focused``: the groups are focused tasks (``cells_per_task``
    is then the number of cells marked in each, ``HALI_FOCUS_CELLS``), with ids ``...-f<col>-<row>``.
    """
    plan = plan_tiles(cells.centroids_xy, cells_per_task)
    cell_ids = np.array([make_cell_id(slide_id, x, y) for x, y in cells.centroids_xy])
    tile_ids = np.array([make_tile_id(slide_id, int(c), int(r), int(p), focused)
                         for (c, r), p in zip(plan.grid, plan.part)])
    tile_ids = tile_ids[plan.tile_index] if len(tile_ids) else np.array([], dtype=str)
    order = np.argsort(plan.tile_index, kind="stable")
    return CellTable(cell_ids[order], cells.boxes[order], tile_ids[order], cells.features[order])
