"""Greedy k-center selection (Coreset; Sener & Savarese 2018).

The labelled points are the initial centres. Each pick is the unlabelled point farthest from its
nearest centre, which then becomes a centre, so the covering radius (largest distance from any point
to its nearest centre) shrinks as fast as greedy selection allows.

Memory stays O(N·d): one centred float32 copy of the features, a few (N,) arrays (squared distances
to the nearest centre, updated in place) and fixed-size blocks of rows x centres. No N x N matrix is
ever built. Distances to the labelled set cost one blocked matrix product, O(N·L·d); after that a pick
updates only the blocks of rows that could hold the farthest point (see :class:`_LazyDistances`), so
100 picks from 1,000,000 x 32 touch a small part of the features instead of all of them 100 times.
"""

from __future__ import annotations

import numpy as np
import torch

# Rows x centres per block when measuring distances to the labelled set: 1 Mi float32 = 4 MiB. Measured
# (bench/bench_coreset.py --labelled 5000): a third faster than 16 MiB blocks, which spill out of the cache.
_BLOCK_ELEMENTS = 1 << 20
# Rows per block of the lazily updated distances (32-d float32: 1 MiB of features per block).
_PICK_BLOCK_ROWS = 8192


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
    # torch, not numpy, for the products: it runs on torch's thread count (1 in the retrain worker), where
    # numpy's OpenBLAS starts its own threads, which made the picks several times slower on a busy 2-core
    # machine.
    xt, sq = torch.from_numpy(x), torch.from_numpy(sq_norms)
    if mask.any():
        min_sq = _min_sq_dist_to_centres(xt, sq, xt[torch.from_numpy(mask)])
        min_sq[torch.from_numpy(mask)] = -torch.inf
        return _LazyDistances(xt, sq, min_sq).picks(n_picks)
    first = int(np.random.default_rng(random_state).integers(len(x)))
    distances = _LazyDistances(xt, sq, torch.full_like(sq, torch.inf))
    distances.add_centre(first)
    return np.concatenate([[first], distances.picks(n_picks - 1)])


class _LazyDistances:
    """Squared distances (N,) float32 to the nearest centre, brought up to date block by block on demand.

    A pick needs only the row farthest from the centres, and a new centre can only bring distances
    down, so each block of rows keeps an upper bound (its largest distance when it was last updated).
    A block is updated, with every centre added since (one small matrix product), only when its bound
    is the largest: the first up-to-date block on top holds the true farthest row. Ties go to the
    lowest index, as with one global argmax. Most blocks are never touched again after the first
    picks, which cuts a pick's cost from a pass over all N x d features to a few blocks.
    """

    def __init__(self, x: torch.Tensor, sq_norms: torch.Tensor, min_sq: torch.Tensor,
                 block_rows: int = _PICK_BLOCK_ROWS) -> None:
        self.x, self.sq_norms, self.min_sq = x, sq_norms, min_sq  # (N, d), (N,), (N,); -inf = never pick
        if len(x) <= 2 * block_rows:  # too few blocks to skip any: one block, one update per pick
            block_rows = max(1, len(x))
        self.starts = list(range(0, len(x), block_rows))
        self.block_rows = block_rows
        self.bound = np.array([float(self._block(b).max()) for b in range(len(self.starts))])
        self.applied = np.zeros(len(self.starts), dtype=np.int64)  # centres already applied to each block
        self.centres: list[int] = []

    def picks(self, n_picks: int) -> np.ndarray:
        """The next ``n_picks`` farthest rows (int64), each becoming a centre before the next is chosen."""
        picks = np.empty(n_picks, dtype=np.int64)
        for i in range(n_picks):
            picks[i] = self._farthest()
            self.add_centre(int(picks[i]))
        return picks

    def add_centre(self, row: int) -> None:
        self.min_sq[row] = -torch.inf  # never picked again; applying its own distance keeps -inf
        self.centres.append(row)

    def _farthest(self) -> int:
        while True:
            b = int(np.argmax(self.bound))  # first maximum: the lowest block among equal bounds
            if self.applied[b] == len(self.centres):
                return self.starts[b] + int(torch.argmax(self._block(b)))
            self._update(b)

    def _update(self, b: int) -> None:
        new = self.centres[self.applied[b] :]
        rows = slice(self.starts[b], self.starts[b] + self.block_rows)
        if len(new) == 1:  # the usual case: a few operations instead of a blocked matrix product
            nearest = torch.addmv(self.sq_norms[rows], self.x[rows], self.x[new[0]], alpha=-2.0)
            nearest += self.sq_norms[new[0]]
        else:
            nearest = _min_sq_dist_to_centres(self.x[rows], self.sq_norms[rows], self.x[new])
        torch.minimum(self.min_sq[rows], nearest, out=self.min_sq[rows])
        self.applied[b] = len(self.centres)
        self.bound[b] = float(self._block(b).max())

    def _block(self, b: int) -> torch.Tensor:
        return self.min_sq[self.starts[b] : self.starts[b] + self.block_rows]


def _min_sq_dist_to_centres(
    x: torch.Tensor, sq_norms: torch.Tensor, centres: torch.Tensor, block_elements: int = _BLOCK_ELEMENTS
) -> torch.Tensor:
    """Squared distance (N,) float32 from each row of ``x`` (N, d) to its nearest row of ``centres`` (L, d).

    The nearest centre maximises ``x.c - |c|^2 / 2``, so each block of rows x centres costs one
    matrix product and one max. Blocks hold at most ``block_elements`` floats; the result does not
    depend on the block size.
    """
    minus_half_c_sq = -0.5 * (centres * centres).sum(dim=1)
    centre_block = max(1, min(len(centres), block_elements // 1024))
    row_block = max(1, block_elements // centre_block)
    best = torch.full((len(x),), -torch.inf)
    for c0 in range(0, len(centres), centre_block):
        c_blk, bias = centres[c0 : c0 + centre_block], minus_half_c_sq[c0 : c0 + centre_block]
        for r0 in range(0, len(x), row_block):
            scores = torch.addmm(bias, x[r0 : r0 + row_block], c_blk.T)
            torch.maximum(best[r0 : r0 + row_block], scores.amax(dim=1), out=best[r0 : r0 + row_block])
    return best.mul_(-2.0).add_(sq_norms)


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
