"""From picked cells to the order in which tiles (Label Studio tasks) are served.

A query strategy picks cells; annotators label whole tiles. :func:`rank_tiles` orders the candidate
tiles by the picks they hold, and :func:`rank_to_score` (re-exported from :mod:`label_config.serving`)
turns that order into prediction scores for Label Studio's "Uncertainty sampling", which serves the task
with the LOWEST score first.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from label_config.serving import rank_to_score

__all__ = ["rank_tiles", "rank_to_score"]


def rank_tiles(cell_tile: np.ndarray, picks: np.ndarray, candidates: Sequence[Hashable]) -> list[Hashable]:
    """``candidates`` reordered: tiles holding more picked cells first, ties by their earliest pick.

    Parameters
    ----------
    cell_tile: (N,) tile key (str or int) of each cell.
    picks: (P,) int indices into ``cell_tile``, in pick order (most useful first).
    candidates: the tiles that may be served; a tile key not listed here never appears in the result.

    Returns
    -------
    Each candidate exactly once (a repeated candidate keeps its first position): first the tiles
    holding picks, by descending pick count then ascending first pick position, then the tiles without
    picks in the order given.
    """
    unique_candidates = list(dict.fromkeys(candidates))
    count: dict[Hashable, int] = {}
    first_pick: dict[Hashable, int] = {}
    candidate_set = set(unique_candidates)
    for position, tile in enumerate(np.asarray(cell_tile)[np.asarray(picks, dtype=np.int64)].tolist()):
        if tile in candidate_set:
            count[tile] = count.get(tile, 0) + 1
            first_pick.setdefault(tile, position)
    picked = sorted(first_pick, key=lambda tile: (-count[tile], first_pick[tile]))
    by_key = {tile: tile for tile in unique_candidates}  # return the caller's own key objects
    return [by_key[tile] for tile in picked] + [tile for tile in unique_candidates if tile not in count]
