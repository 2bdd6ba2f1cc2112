"""Spatial order and tasks: how a pathologist walks through the cells, and how cells group into tasks.

:func:`spatial_order` is the order the ``sequential`` control follows: source image by source image (in an
order a seed shuffles: the pathologist starts somewhere), each image tile by tile, and inside a tile row by
row of ``grid_px`` squares, snaking left-right then right-left. :func:`group_tasks` cuts that walk into
consecutive runs of about ``cells_per_task`` cells, never across a source image, so a task is a compact
patch of tissue as a tile of ``hali preprocess`` is.
"""

from __future__ import annotations

import numpy as np

from ml_backend.simulation.dataset import CellDataset


def spatial_order(data: CellDataset, grid_px: float = 64.0, random_state: int | None = None) -> np.ndarray:
    """Permutation (N,) int64 of the cells in walking order; ``random_state`` None keeps sources sorted."""
    sources, source_idx = np.unique(data.source, return_inverse=True)
    rank = np.arange(len(sources))
    if random_state is not None:
        rank = np.random.default_rng(random_state).permutation(len(sources))
    _, image_idx = np.unique(data.image, return_inverse=True)
    row = np.floor(data.xy[:, 1] / grid_px).astype(np.int64)
    col = np.floor(data.xy[:, 0] / grid_px).astype(np.int64)
    snake_col = np.where(row % 2 == 0, col, -col)
    snake_x = np.where(row % 2 == 0, data.xy[:, 0], -data.xy[:, 0])
    # np.lexsort sorts by the last key first.
    return np.lexsort((snake_x, snake_col, row, image_idx, rank[source_idx])).astype(np.int64)


def group_tasks(source: np.ndarray, cells_per_task: int) -> np.ndarray:
    """Task id (N,) int64 of cells already in walking order; ids count up along the walk.

    Each source image's run of cells is cut into ``ceil(n / cells_per_task)`` nearly equal tasks.
    """
    if cells_per_task < 1:
        raise ValueError(f"cells_per_task must be >= 1, got {cells_per_task}")
    task = np.empty(len(source), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, source[1:] != source[:-1]]) if len(source) else np.empty(0, int)
    next_id = 0
    for start, stop in zip(starts, np.r_[starts[1:], len(source)]):
        n = stop - start
        n_tasks = -(-n // cells_per_task)
        task[start:stop] = next_id + (np.arange(n) * n_tasks) // n
        next_id += n_tasks
    return task
