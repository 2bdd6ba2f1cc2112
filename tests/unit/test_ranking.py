"""Tile ranking: picked cells -> the order Label Studio serves tasks in."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.ordering.ranking import rank_tiles, rank_to_score


def test_tiles_with_more_picks_come_first_then_earliest_pick_then_candidate_order():
    cell_tile = np.array(["a", "a", "b", "c", "c", "c", "d"])
    picks = np.array([1, 3, 0, 4, 2])  # tiles a, c, a, c, b
    assert rank_tiles(cell_tile, picks, ["e", "d", "c", "b", "a"]) == ["a", "c", "b", "e", "d"]


def test_tiles_that_are_not_candidates_never_appear():
    cell_tile = np.array([10, 10, 20, 30])
    picks = np.array([0, 1, 2, 3])  # tile 10 holds two picks but is already labelled
    assert rank_tiles(cell_tile, picks, [30, 20, 40]) == [20, 30, 40]


def test_ranking_returns_the_callers_key_objects():
    cell_tile = np.array([5, 7], dtype=np.int64)
    ranked = rank_tiles(cell_tile, np.array([1]), [5, 7])
    assert ranked == [7, 5] and all(type(tile) is int for tile in ranked)


def test_repeated_candidates_appear_once():
    assert rank_tiles(np.array(["a"]), np.array([0]), ["b", "a", "b"]) == ["a", "b"]


@given(
    cell_tile=st.lists(st.integers(0, 9), min_size=1, max_size=50),
    data=st.data(),
)
def test_every_candidate_appears_exactly_once_and_nothing_else(cell_tile, data):
    n_cells = len(cell_tile)
    picks = data.draw(st.lists(st.integers(0, n_cells - 1), unique=True, max_size=n_cells))
    candidates = data.draw(st.lists(st.integers(0, 12), unique=True))
    ranked = rank_tiles(np.array(cell_tile), np.array(picks, dtype=np.int64), candidates)
    assert sorted(ranked) == sorted(candidates)
    counts = [sum(cell_tile[p] == tile for p in picks) for tile in ranked]
    assert counts == sorted(counts, reverse=True)


@given(st.integers(0, 2000))
def test_scores_are_in_unit_interval_and_strictly_increase_with_rank(n):
    scores = rank_to_score(n)
    assert scores.shape == (n,)
    assert (scores >= 0).all() and (scores < 1).all()
    assert (np.diff(scores) > 0).all()
