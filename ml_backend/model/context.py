"""Spatial context of a cell: what its neighbours look like, how crowded it sits, and what they are predicted.

A lymphocyte in a lymphoid aggregate, a tumour cell in a gland: a nucleus's neighbours say much about its
class. These pure functions work on cell centroids in level-0 pixels with the slide's ``mpp`` (or any
pixels with their micrometres per pixel), one KD-tree (:class:`scipy.spatial.cKDTree`) per group: a
slide in the product, a source image in ``hali simulate``. Cells of different groups are never neighbours.

- :func:`spatial_neighbours`: the ``k`` nearest other cells of each cell, (N, k) indices.
- :func:`local_density`: other cells within ``radius_um``, (N,).
- :func:`context_features`: ``[x, mean of the k neighbours' x, local density]``, (N, 2d + 1).
- :func:`smooth_proba`: ``p' = alpha p + (1 - alpha) mean of the k neighbours' p``.
- :func:`slide_context_features`: all of it for one slide's cell table (level-0 boxes, features, mpp).
- :func:`context_of_rows`, :func:`smooth_rows`: the same for some cells of a slide only (the product computes
  neighbours once per slide and these for the cells a retrain or a ``/predict`` needs).
- :func:`context_at`: context features of cells that are not in the table (boxes drawn by hand).

A cell with fewer than ``k`` other cells in its group repeats itself in the missing slots (so a lone cell's
context is its own features, and smoothing leaves it alone).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_NEIGHBOURS = 8
DEFAULT_RADIUS_UM = 25.0  # about 3-4 nuclear diameters


def spatial_neighbours(xy_px: np.ndarray, groups: np.ndarray | None = None, k: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """Indices (N, k) int64 of each cell's ``k`` nearest other cells of its group, nearest first.

    ``xy_px`` (N, 2) centroids as (x, y) in any one pixel frame per group; ``groups`` (N,) any hashable
    labels (None: one group). Missing neighbours (a group of <= k cells) are the cell itself.
    """
    xy, group_idx = _check(xy_px, groups)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    out = np.repeat(np.arange(len(xy), dtype=np.int64)[:, None], k, axis=1)
    for members in _members(group_idx):
        n_query = min(k + 1, len(members))
        if n_query < 2:
            continue
        _, nearest = cKDTree(xy[members]).query(xy[members], k=n_query)
        nearest = members[nearest[:, 1:]]  # drop the cell itself (distance 0, first)
        out[members, : nearest.shape[1]] = nearest
    return out


def local_density(xy_px: np.ndarray, mpp: float, groups: np.ndarray | None = None,
                  radius_um: float = DEFAULT_RADIUS_UM) -> np.ndarray:
    """Number (N,) float32 of other cells of the same group within ``radius_um`` micrometres of each cell."""
    xy, group_idx = _check(xy_px, groups)
    if mpp <= 0 or radius_um <= 0:
        raise ValueError(f"mpp={mpp} and radius_um={radius_um} must be > 0")
    out = np.zeros(len(xy), dtype=np.float32)
    for members in _members(group_idx):
        tree = cKDTree(xy[members])
        out[members] = tree.query_ball_point(xy[members], r=radius_um / mpp, return_length=True) - 1
    return out


def context_features(features: np.ndarray, neighbours: np.ndarray, density: np.ndarray) -> np.ndarray:
    """``[features, mean of the neighbours' features, density]``: (N, 2d + 1) float32.

    ``features`` (N, d), ``neighbours`` (N, k) from :func:`spatial_neighbours`, ``density`` (N,) from
    :func:`local_density`.
    """
    x = np.asarray(features, dtype=np.float32)
    nbrs = _check_neighbours(neighbours, len(x))
    if np.shape(density) != (len(x),):
        raise ValueError(f"density must be (N,) = ({len(x)},), got shape {np.shape(density)}")
    mean_nbr = x[nbrs].mean(axis=1)
    return np.concatenate([x, mean_nbr, np.asarray(density, np.float32)[:, None]], axis=1)


def smooth_proba(proba: np.ndarray, neighbours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``alpha * p + (1 - alpha) * mean_j p[neighbours[:, j]]``: (N, K) float32, rows still sum to 1.

    ``proba`` (N, K) class probabilities of every cell the neighbour indices point to; ``alpha`` 1 keeps
    them as they are.
    """
    p = np.asarray(proba, dtype=np.float32)
    nbrs = _check_neighbours(neighbours, len(p))
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    if alpha == 1.0:
        return p
    return alpha * p + (1.0 - alpha) * p[nbrs].mean(axis=1)


def box_centroids(boxes_px: np.ndarray) -> np.ndarray:
    """Centroids (N, 2) float64 as (x, y) of level-0 boxes (N, 4) given as (x0, y0, w, h) (a cell table's ``boxes``)."""
    b = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    return b[:, :2] + b[:, 2:] / 2.0


def slide_context_features(features: np.ndarray, boxes_px: np.ndarray, mpp: float, k: int = DEFAULT_NEIGHBOURS,
                           radius_um: float = DEFAULT_RADIUS_UM) -> tuple[np.ndarray, np.ndarray]:
    """``(context features (N, 2d + 1) float32, neighbours (N, k) int64)`` of every cell of one slide.

    ``features`` (N, d) and ``boxes_px`` (N, 4) level-0 (x0, y0, w, h) are a cell table's; ``mpp`` the slide's
    level-0 micrometres per pixel. The neighbours are what :func:`smooth_proba` needs at predict time.
    """
    xy = box_centroids(boxes_px)
    neighbours = spatial_neighbours(xy, k=k)
    return context_features(features, neighbours, local_density(xy, mpp, radius_um=radius_um)), neighbours


def _check(xy_px: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(xy_px, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy_px must be (N, 2) as (x, y), got shape {xy.shape}")
    if groups is None:
        return xy, np.zeros(len(xy), dtype=np.int64)
    g = np.asarray(groups)
    if g.shape != (len(xy),):
        raise ValueError(f"groups must be (N,) = ({len(xy)},), got shape {g.shape}")
    return xy, np.unique(g, return_inverse=True)[1].reshape(-1)


def _members(group_idx: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(group_idx, kind="stable")
    bounds = np.flatnonzero(np.diff(group_idx[order])) + 1
    return [m for m in np.split(order, bounds) if len(m)]


def _check_neighbours(neighbours: np.ndarray, n: int) -> np.ndarray:
    nbrs = np.asarray(neighbours)
    if nbrs.ndim != 2 or len(nbrs) != n or not np.issubdtype(nbrs.dtype, np.integer):
        raise ValueError(f"neighbours must be (N, k) integers with N = {n}, got {nbrs.dtype} {nbrs.shape}")
    return nbrs


def context_of_rows(features: np.ndarray, neighbours: np.ndarray, density: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """:func:`context_features` of the cells ``rows`` (M,) int only: (M, 2d + 1) float32.

    ``features`` (N, d), ``neighbours`` (N, k) and ``density`` (N,) cover every cell of the slide, so a cell's
    neighbours may be cells outside ``rows``; row for row equal to ``context_features(...)[rows]``.
    """
    x = np.asarray(features, dtype=np.float32)
    nbrs = _check_neighbours(neighbours, len(x))
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    nbr = nbrs[idx]
    out = np.empty((len(idx), 2 * x.shape[1] + 1), np.float32)
    d = x.shape[1]
    out[:, :d] = x[idx]
    mean_nbr = out[:, d : 2 * d]
    np.take(x, nbr[:, 0], axis=0, out=mean_nbr)
    for j in range(1, nbr.shape[1]):  # one (M, d) temporary at a time, not (M, k, d)
        mean_nbr += x[nbr[:, j]]
    mean_nbr /= nbr.shape[1]
    out[:, -1] = np.asarray(density, np.float32)[idx]
    return out


def smooth_rows(proba_of: Callable[[np.ndarray], np.ndarray], neighbours: np.ndarray, rows: np.ndarray,
                alpha: float) -> np.ndarray:
    """:func:`smooth_proba` of the cells ``rows`` (M,) int only: (M, K) float32.

    ``proba_of(idx)`` gives (len(idx), K) probabilities of the cells ``idx`` (sorted, unique int64); it is
    called once, on ``rows`` and their neighbours, so a retrain or a ``/predict`` of one tile never computes
    the whole slide. Row for row equal to ``smooth_proba(proba_of(all cells), neighbours, alpha)[rows]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if alpha == 1.0:
        return np.asarray(proba_of(idx), dtype=np.float32)
    nbrs = np.asarray(neighbours)[idx]
    if len(idx) * (nbrs.shape[1] + 1) >= len(neighbours):  # most of the slide: every cell, no sort
        return _smooth_all(np.asarray(proba_of(np.arange(len(neighbours))), np.float32), nbrs, idx, alpha)
    needed = np.unique(np.concatenate([idx, nbrs.reshape(-1)]))
    p = np.asarray(proba_of(needed), dtype=np.float32)
    own, theirs = p[np.searchsorted(needed, idx)], p[np.searchsorted(needed, nbrs)].mean(axis=1)
    return alpha * own + (1.0 - alpha) * theirs


def _smooth_all(p: np.ndarray, nbrs: np.ndarray, idx: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` p[idx] + (1 - alpha) mean_j p[nbrs[:, j]]: (M, K) float32, one (M, K) temporary at a time."""
    theirs = p[nbrs[:, 0]]
    for j in range(1, nbrs.shape[1]):
        theirs += p[nbrs[:, j]]
    theirs *= (1.0 - alpha) / nbrs.shape[1]
    theirs += alpha * p[idx]
    return theirs


def context_at(xy_px: np.ndarray, features: np.ndarray, table_xy_px: np.ndarray, table_features: np.ndarray,
               mpp: float, k: int = DEFAULT_NEIGHBOURS, radius_um: float = DEFAULT_RADIUS_UM) -> np.ndarray:
    """Context features (M, 2d + 1) float32 of new cells (a box drawn by hand) among a slide's table cells.

    ``xy_px`` (M, 2) and ``table_xy_px`` (N, 2) level-0 (x, y) centroids; ``features`` (M, d) and
    ``table_features`` (N, d). A new cell's neighbours and density count table cells only (it is not one).
    """
    x = np.asarray(features, dtype=np.float32)
    table_x = np.asarray(table_features, dtype=np.float32)
    if not len(table_x):
        return np.concatenate([x, x, np.zeros((len(x), 1), np.float32)], axis=1)
    tree = cKDTree(np.asarray(table_xy_px, dtype=np.float64))
    _, nearest = tree.query(np.asarray(xy_px, dtype=np.float64), k=min(k, len(table_x)))
    nearest = np.asarray(nearest).reshape(len(x), -1)
    density = tree.query_ball_point(np.asarray(xy_px, dtype=np.float64), r=radius_um / mpp, return_length=True)
    return np.concatenate([x, table_x[nearest].mean(axis=1), np.asarray(density, np.float32).reshape(-1, 1)], axis=1)
