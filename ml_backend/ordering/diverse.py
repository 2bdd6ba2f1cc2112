"""Picks that are representative and diverse, then uncertain: the building blocks of ``density``, ``cluster``
and ``spread`` (registered in :mod:`ml_backend.ordering.strategies`).

Coreset picks the point farthest from everything labelled, which in real tissue is often an outlier: in the
issue's replay 11 of the first 40 tasks came from one pigment-stained image. These functions keep the
spread and drop the chase:

- :func:`feature_density`: how crowded each cell's neighbourhood in feature space is (outliers: low).
- :func:`cluster_picks`: k-means on the unlabelled cells, then the most uncertain cell of each cluster,
  largest clusters first.
- :func:`spread_over_groups`: reorder picks round-robin over groups (source images, slides), the groups
  with the fewest labels first, so consecutive tasks come from different images.

All are deterministic for a given ``random_state``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

_DENSITY_REFERENCE_ROWS = 2_000  # density is measured against a seeded sample: O(N x 2000), not O(N^2)
_KMEANS_FIT_ROWS_PER_CLUSTER = 50  # k-means is fit on at most this x k rows, then every row is assigned
_ASSIGN_ROWS = 65_536  # rows assigned to their cluster at a time: 65,536 x k float64 distances


def uncertainty(proba: np.ndarray | None, n_rows: int) -> np.ndarray:
    """``1 - (p_top1 - p_top2)`` (N,) float64 in [0, 1]: 1 for a coin flip; all 0 when ``proba`` is None."""
    if proba is None:
        return np.zeros(n_rows)
    p = np.asarray(proba, dtype=np.float64)
    if p.shape[1] < 2:
        return np.zeros(n_rows)
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def feature_density(features: np.ndarray, k: int = 10, random_state: int = 0) -> np.ndarray:
    """Density (N,) float64, mean 1: inverse mean distance to the ``k`` nearest of a seeded reference sample.

    ``features`` (N, d) float. An outlier far from every other cell gets a small value; a cell in the
    bulk of its class about 1 or more.
    """
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    rng = np.random.default_rng(random_state)
    ref = x[torch.from_numpy(rng.permutation(len(x))[:_DENSITY_REFERENCE_ROWS])]
    k_eff = min(k + 1, len(ref))
    mean_dist = torch.cat([torch.cdist(x[r : r + 4096], ref).topk(k_eff, largest=False).values[:, 1:].mean(1)
                           if k_eff > 1 else torch.zeros(len(x[r : r + 4096]))
                           for r in range(0, len(x), 4096)]).double().numpy()
    density = 1.0 / (mean_dist + 1e-6 * (mean_dist.mean() + 1e-12))
    return density / density.mean()


def cluster_picks(features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, n_picks: int,
                  random_state: int = 0) -> np.ndarray:
    """``n_picks`` unlabelled indices (int64): k-means (k = ``n_picks``) on the unlabelled rows, then per cluster
    the most uncertain row of the half nearer its centre (:func:`uncertainty`; without ``proba`` the row nearest
    the centre).

    Order: every cluster's best row, largest cluster first; then every cluster's second best, and so on,
    so the picks are representative (large clusters) before they are exhaustive.
    """
    unlabeled = np.flatnonzero(~labeled)
    n_picks = min(n_picks, len(unlabeled))
    if n_picks == 0:
        return np.empty(0, dtype=np.int64)
    x = np.ascontiguousarray(features[unlabeled], dtype=np.float32)
    cluster, centre_dist = _kmeans(x, n_picks, random_state)
    u = uncertainty(None if proba is None else proba[unlabeled], len(unlabeled))
    key = -u if proba is not None else centre_dist
    # The most uncertain member of a cluster is often its oddest one: take it from the half nearer the centre.
    outer = centre_dist > _cluster_medians(centre_dist, cluster, n_picks)[cluster]
    order = np.lexsort((np.arange(len(x)), key, outer, cluster))  # by cluster, inner half first, best first
    rank = np.empty(len(x), dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(cluster[order])) + 1]
    rank[order] = np.arange(len(x)) - np.repeat(starts, np.diff(np.r_[starts, len(x)]))
    size = np.bincount(cluster, minlength=n_picks)[cluster]
    chosen = np.lexsort((np.arange(len(x)), -size, rank))[:n_picks]
    return unlabeled[chosen].astype(np.int64)


def spread_over_groups(picks: np.ndarray, groups: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """``picks`` reordered round-robin over ``groups``: each group's best pick first, groups with fewer labels
    (``labeled`` (N,) bool) before others and ties by their best pick's position; then second picks, etc."""
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_labels = np.bincount(codes[labeled], minlength=codes.max() + 1)
    pick_group = codes[picks]
    rank = np.zeros(len(picks), dtype=np.int64)
    seen: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, g in enumerate(pick_group.tolist()):
        rank[i] = seen.get(g, 0)
        seen[g] = rank[i] + 1
        first.setdefault(g, i)
    first_pos = np.array([first[g] for g in pick_group.tolist()], dtype=np.int64)
    return picks[np.lexsort((np.arange(len(picks)), first_pos, n_labels[pick_group], rank))]


def _cluster_medians(values: np.ndarray, cluster: np.ndarray, k: int) -> np.ndarray:
    """Median (k,) float64 of ``values`` (N,) in each of ``k`` clusters (0 for an empty one)."""
    out = np.zeros(k)
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(k + 1))
    for c in range(k):
        members = values[order[bounds[c] : bounds[c + 1]]]
        out[c] = np.median(members) if len(members) else 0.0
    return out


def _kmeans(x: np.ndarray, k: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster (N,) int64, distance to its centre (N,) float64) of k-means fit on a seeded sample of ``x``."""
    rng = np.random.default_rng(random_state)
    fit_rows = x[rng.permutation(len(x))[: max(k, _KMEANS_FIT_ROWS_PER_CLUSTER * k)]]
    model = KMeans(n_clusters=k, n_init=1, max_iter=50, random_state=random_state)
    # One thread, as torch in the worker: OpenMP's threads made k-means 5x slower on a busy 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")  # duplicate rows: fewer distinct points than clusters is fine here
        model.fit(fit_rows)
        return assign_to_centres(x, model.cluster_centers_)


def assign_to_centres(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centre (N,) int64, Euclidean distance to it (N,) float64) of rows ``x`` (N, d) among ``centres``
    (k, d): one float32 matmul per chunk of rows, |x|^2 - 2 x.c + |c|^2 (sklearn's ``transform`` upcasts
    float32 to float64 row block by row block, 4x slower at 100,000 x 100)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centres, dtype=np.float32)
    c_sq = (c.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    cluster, centre_dist = np.empty(len(x), np.int64), np.empty(len(x), np.float64)
    for s in range(0, len(x), _ASSIGN_ROWS):  # (chunk, k) distances at a time, not (N, k)
        chunk = x[s : s + _ASSIGN_ROWS]
        d_sq = chunk @ (-2.0 * c.T)
        d_sq += c_sq
        nearest = d_sq.argmin(axis=1)
        x_sq = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)
        cluster[s : s + len(chunk)] = nearest
        centre_dist[s : s + len(chunk)] = np.sqrt(np.maximum(d_sq[np.arange(len(chunk)), nearest] + x_sq, 0.0))
    return cluster, centre_dist
