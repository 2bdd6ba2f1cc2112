"""Greedy k-center selection (Coreset; Sener & Savarese 2018).

The labelled points are the initial centres. Each pick is the unlabelled point farthest from its
nearest centre, which then becomes a centre, so the covering radius (largest distance from any point
to its nearest centre) shrinks as fast as greedy selection allows.

Memory stays O(N): one (N,) array of squared distances to the nearest centre, updated in O(N·d) per
pick with a matrix-vector product; no N x N matrix is ever built.
"""

from __future__ import annotations

import numpy as np
import torch

# Rows x centres per block when measuring distances to the labelled set: 4 Mi float32 = 16 MiB.
_BLOCK_ELEMENTS = 1 << 22


def select_coreset(features: np.ndarray, labeled: np.ndarray, budget: int, random_state: int = 0) -> np.ndarray:
    """Indices of up to ``budget`` unlabelled points, in pick order.

    Parameters
    ----------
    features: (N, d) float; distances are Euclidean, computed in float32.
    labeled: (N,) bool; True rows are the initial centres and are never picked.
    budget: how many points to pick (>= 0).
    random_state: seed choosing the first pick when nothing is labelled.

    Returns
    -------
    (min(budget, #unlabelled),) int64, unique, all unlabelled, most distant first.
    """
    x, mask = _check_inputs(features, labeled, budget)
    n_picks = min(budget, int((~mask).sum()))
    if n_picks == 0:
        return np.empty(0, dtype=np.int64)
    # Centring keeps |x|^2 - 2 x.c + |c|^2 accurate in float32 when the cloud sits far from the origin.
    x = np.subtract(x, x.mean(axis=0, dtype=np.float64), dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", x, x)
    if not np.isfinite(sq_norms).all():  # cheaper than checking all N x d values, and catches overflow
        raise ValueError("features contain NaN or infinite values, or values too large for float32 distances")
    if mask.any():
        min_sq = _min_sq_dist_to_centres(x, sq_norms, x[mask])
        min_sq[mask] = -np.inf
        return _greedy_picks(x, sq_norms, min_sq, n_picks)
    first = int(np.random.default_rng(random_state).integers(len(x)))
    min_sq = _sq_dist_to_point(x, sq_norms, first)
    min_sq[first] = -np.inf
    return np.concatenate([[first], _greedy_picks(x, sq_norms, min_sq, n_picks - 1)])


def _greedy_picks(x: np.ndarray, sq_norms: np.ndarray, min_sq: np.ndarray, n_picks: int) -> np.ndarray:
    """Pick ``n_picks`` times the row with the largest ``min_sq`` (N,), updating ``min_sq`` in place.

    ``min_sq`` is -inf for rows that may not be picked (labelled, or picked already).
    """
    picks = np.empty(n_picks, dtype=np.int64)
    for i in range(n_picks):
        pick = int(np.argmax(min_sq))
        picks[i] = pick
        np.minimum(min_sq, _sq_dist_to_point(x, sq_norms, pick), out=min_sq)
        min_sq[pick] = -np.inf
    return picks


def _sq_dist_to_point(x: np.ndarray, sq_norms: np.ndarray, row: int) -> np.ndarray:
    """Squared distances (N,) float32 from every row of ``x`` (N, d) to row ``row``."""
    sq = x @ x[row]
    sq *= -2.0
    sq += sq_norms
    sq += sq_norms[row]
    return sq


def _min_sq_dist_to_centres(x: np.ndarray, sq_norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distance (N,) float32 from each row of ``x`` (N, d) to its nearest row of ``centres`` (L, d).

    The nearest centre maximises ``x.c - |c|^2 / 2``, so each block of rows x centres costs one
    matrix product and one max (torch's addmm is about twice numpy's speed for this thin shape).
    Blocks hold at most ``_BLOCK_ELEMENTS`` floats.
    """
    xt, ct = torch.from_numpy(x), torch.from_numpy(centres)
    minus_half_c_sq = -0.5 * (ct * ct).sum(dim=1)
    centre_block = min(len(ct), _BLOCK_ELEMENTS // 1024)
    row_block = max(1, _BLOCK_ELEMENTS // centre_block)
    best = torch.full((len(xt),), -torch.inf)
    for c0 in range(0, len(ct), centre_block):
        c_blk, bias = ct[c0 : c0 + centre_block], minus_half_c_sq[c0 : c0 + centre_block]
        for r0 in range(0, len(xt), row_block):
            scores = torch.addmm(bias, xt[r0 : r0 + row_block], c_blk.T)
            best[r0 : r0 + row_block] = torch.maximum(best[r0 : r0 + row_block], scores.amax(dim=1))
    return sq_norms - 2.0 * best.numpy()


def _check_inputs(features: np.ndarray, labeled: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """``features`` as a float (N, d) array and ``labeled`` as bool (N,); ValueError otherwise."""
    x = np.asarray(features)
    mask = np.asarray(labeled)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"features must be a numeric (N, d) array, got {x.dtype} {x.shape}")
    if mask.shape != (len(x),) or mask.dtype != np.bool_:
        raise ValueError(f"labeled must be a bool array of shape ({len(x)},), got {mask.dtype} {mask.shape}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    return x, mask
