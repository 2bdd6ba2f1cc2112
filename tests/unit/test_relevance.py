"""Sadafi et al.'s relevance score: U_c, U_d, the rare flag, the cell score and the tile score, by hand."""

import numpy as np
import pytest

from ml_backend.ordering.ranking import rank_tiles
from ml_backend.ordering.relevance import (
    RelevanceParams,
    cell_scores,
    class_certainty,
    detection_certainty,
    rare_flag,
    rarest_class,
)
from ml_backend.ordering.strategies import get_strategy, query


def passes_from_votes(votes: list[list[int]], k: int = 3, p_top: float = 0.6) -> np.ndarray:
    """(T, N, K) passes where pass t gives cell n probability ``p_top`` on class ``votes[t][n]``."""
    v = np.asarray(votes)
    p = np.full((*v.shape, k), (1 - p_top) / (k - 1))
    np.put_along_axis(p, v[..., None], p_top, axis=2)
    return p


def test_class_certainty_is_the_share_of_passes_agreeing_with_the_mode():
    # 5 passes; cell 0: all agree; cell 1: 4 of 5; cell 2: 3/1/1; cell 3: 2/2/1 (mode share 2/5)
    votes = [[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 1], [0, 1, 0, 1], [0, 0, 1, 2]]
    np.testing.assert_allclose(class_certainty(passes_from_votes(votes)), [1.0, 0.8, 0.6, 0.4])


def test_detection_certainty_is_the_mean_pairwise_iou_across_passes():
    same = [0, 0, 10, 10]
    half = [5, 0, 15, 10]  # overlaps `same` by 50 px^2 of 150: IoU 1/3
    boxes = np.array([[same, same, same], [same, same, half], [same, same, [np.nan] * 4]], dtype=float)
    # (N, T, 4) as written: cell 0 the same box thrice -> 1; cell 1 same, same, half -> pairs 1, 1/3, 1/3;
    # cell 2: the third pass lost it -> pairs 1, 0, 0
    u_d = detection_certainty(boxes.transpose(1, 0, 2))
    np.testing.assert_allclose(u_d, [1.0, (1 + 1 / 3 + 1 / 3) / 3, 1 / 3])
    assert detection_certainty(np.array([[same, half]], dtype=float)).tolist() == [1.0, 1.0]  # one pass


def test_detection_certainty_rejects_boxes_that_are_not_corners():
    with pytest.raises(ValueError, match=r"\(T, N, 4\)"):
        detection_certainty(np.zeros((3, 5, 2)))


def test_rare_flag_uses_the_mean_probability_over_passes():
    p = np.zeros((2, 3, 2))
    p[:, :, 0] = [[0.1, 0.3, 0.25], [0.1, 0.1, 0.1]]  # mean p(class 0): 0.1, 0.2, 0.175
    p[:, :, 1] = 1 - p[:, :, 0]
    assert rare_flag(p, 0, 0.2).tolist() == [False, False, False]  # 0.2 is not above 0.2
    assert rare_flag(p, 0, 0.15).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="rare class 2"):
        rare_flag(p, 2)


def test_rarest_class_counts_classes_without_labels_as_rarest():
    assert rarest_class(np.array([0, 0, 1, 2, 2, 2]), 3) == 1
    assert rarest_class(np.array([0, 0, 2]), 3) == 1  # no label of class 1 yet
    assert rarest_class(np.array([1, 0]), 2) == 0  # ties: lowest index


def test_cell_score_is_alpha_uncertain_plus_beta_badly_detected_plus_gamma_rare():
    # cells: 0 certain, 1 uncertain (U_c 0.6), 2 rare-class (p 0.6 on class 2), 3 uncertain and rare-ish
    votes = [[0, 0, 2, 2], [0, 1, 2, 2], [0, 1, 2, 0], [0, 0, 2, 0], [0, 0, 2, 1]]
    p = passes_from_votes(votes)
    u_d = np.array([1.0, 0.95, 0.5, 0.9])
    params = RelevanceParams(alpha=1, beta=2, gamma=10, rare_class=2)
    # cell 3: U_c = 0.4 -> 1; U_d 0.9 <= 0.9 -> 2; mean p(2) = (0.6 * 2 + 0.2 * 3) / 5 = 0.36 > 0.2 -> 10
    np.testing.assert_allclose(cell_scores(p, params, u_d), [0, 1, 2 + 10, 1 + 2 + 10])
    np.testing.assert_allclose(cell_scores(p, params), [0, 1, 10, 11])  # no stochastic boxes: U_d = 1


def test_a_single_pass_can_only_score_the_rare_class():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    np.testing.assert_allclose(cell_scores(p, RelevanceParams(rare_class=1)), [10, 0])


def test_params_reject_out_of_range_values():
    with pytest.raises(ValueError, match="gamma"):
        RelevanceParams(gamma=-1)
    with pytest.raises(ValueError, match="class_certainty_max"):
        RelevanceParams(class_certainty_max=1.5)


def test_relevance_ranks_tiles_by_the_papers_tile_score():
    # Tile A: 3 uncertain cells (score 3); tile B: one rare-class cell (10); tile C: 1 uncertain (1).
    # Tile D: certain cells only (0). Expected order: B (10), A (3), C (1), D (0).
    tile = np.array(["A", "A", "A", "B", "B", "C", "C", "D", "D"])
    uncertain, certain, rare = [0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2]
    votes = np.array([uncertain, uncertain, uncertain, rare, certain, uncertain, certain, certain, certain]).T
    p = passes_from_votes(votes.tolist())
    labeled = np.zeros(len(tile), dtype=bool)
    strategy = get_strategy("relevance", RelevanceParams(rare_class=2))
    picks, weights = query(strategy, np.zeros((len(tile), 2)), p, labeled, budget=2, random_state=0)
    assert len(picks) == len(tile), "the tile score counts every unlabelled cell, whatever the budget"
    scores = dict(zip(tile[picks].tolist(), [0.0] * len(picks)))
    for t, w in zip(tile[picks].tolist(), weights):
        scores[t] += w
    assert scores == {"A": 3.0, "B": 10.0, "C": 1.0, "D": 0.0}
    assert rank_tiles(tile, picks, ["D", "C", "B", "A"], weights) == ["B", "A", "C", "D"]


def test_labelled_cells_do_not_count_towards_a_tile_score():
    tile = np.array(["A", "A", "B"])
    p = passes_from_votes([[2, 2, 0], [2, 2, 0]])  # cells 0, 1: rare class
    labeled = np.array([True, False, False])
    picks, weights = query(get_strategy("relevance", RelevanceParams(rare_class=2)), np.zeros((3, 1)), p,
                           labeled, 10, 0)
    assert sorted(picks.tolist()) == [1, 2] and dict(zip(picks.tolist(), weights.tolist())) == {1: 10.0, 2: 0.0}
