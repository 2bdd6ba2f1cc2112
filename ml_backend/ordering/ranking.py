"""From picked cells to the order in which tiles (Label Studio tasks) are served.

A query strategy picks cells; annotators label whole tiles. :func:`rank_tiles` orders the candidate
tiles by the picks they hold (a count, or a sum of per-pick weights such as relevance scores), and
:func:`rank_to_score` (re-exported from :mod:`label_config.serving`) turns that order into prediction scores for Label Studio's "Uncertainty sampling", which serves the task
with the LOWEST score first.

Cells predicted "Not a nucleus" are worth nothing to their tile (``excluded``): active learning does not
chase debris, and a tile the model believes holds no nucleus at all is served last.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from label_config.serving import rank_to_score

__all__ = ["rank_tiles", "rank_to_score"]


def rank_tiles(
    cell_tile: np.ndarray,
    picks: np.ndarray,
    candidates: Sequence[Hashable],
    weights: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
) -> list[Hashable]:
    """``candidates`` reordered: tiles whose picks weigh most first, ties by their earliest pick.

    Parameters
    ----------
    cell_tile: (N,) tile key (str or int) of each cell.
    picks: (P,) int indices into ``cell_tile``, in pick order (most useful first).
    candidates: the tiles that may be served; a tile key not listed here never appears in the result.
    weights: (P,) float, what each pick adds to its tile's score; None counts picks (1 each). The
        ``relevance`` strategy passes every unlabelled cell with its relevance score, which makes a
        tile's score the paper's ``alpha #(U_c <= 0.8) + beta #(U_d <= 0.9) + gamma #rare``.
    excluded: (N,) bool, cells that count for nothing (predicted "Not a nucleus"): a pick on one is
        ignored, and a tile all of whose cells are excluded comes after every other tile.

    Returns
    -------
    Each candidate exactly once (a repeated candidate keeps its first position): first the tiles
    holding picks, by descending score (sum of their picks' weights) then ascending first pick
    position, then the tiles without picks in the order given, then the tiles of excluded cells only.
    """
    pick_idx = np.asarray(picks, dtype=np.int64)
    w = np.ones(len(pick_idx)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != pick_idx.shape:
        raise ValueError(f"weights must be one per pick, shape {pick_idx.shape}, got {w.shape}")
    tiles = np.asarray(cell_tile)
    if excluded is not None:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != tiles.shape:
            raise ValueError(f"excluded must be one bool per cell, shape {tiles.shape}, got {excluded.shape}")
        keep = ~excluded[pick_idx]
        pick_idx, w = pick_idx[keep], w[keep]
    unique_candidates = list(dict.fromkeys(candidates))
    score: dict[Hashable, float] = {}
    first_pick: dict[Hashable, int] = {}
    candidate_set = set(unique_candidates)
    for position, (tile, weight) in enumerate(zip(tiles[pick_idx].tolist(), w.tolist())):
        if tile in candidate_set:
            score[tile] = score.get(tile, 0.0) + weight
            first_pick.setdefault(tile, position)
    picked = sorted(first_pick, key=lambda tile: (-score[tile], first_pick[tile]))
    by_key = {tile: tile for tile in unique_candidates}  # return the caller's own key objects
    rest = [tile for tile in unique_candidates if tile not in score]
    last = _only_excluded(tiles, excluded) if excluded is not None else set()
    return ([by_key[tile] for tile in picked] + [tile for tile in rest if tile not in last]
            + [tile for tile in rest if tile in last])


def _only_excluded(cell_tile: np.ndarray, excluded: np.ndarray) -> set[Hashable]:
    """Tiles (keys of ``cell_tile``) all of whose cells are ``excluded``."""
    with_kept = set(cell_tile[~excluded].tolist())
    return set(cell_tile[excluded].tolist()) - with_kept
