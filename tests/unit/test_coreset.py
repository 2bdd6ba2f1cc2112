"""select_coreset: greedy k-center selection."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ml_backend.ordering.coreset import _LazyDistances, _min_sq_dist_to_centres, select_coreset


def sq_dist_to_nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Exact float64 squared distance (N,) from each point to its nearest centre."""
    diff = points[:, None, :].astype(np.float64) - centres[None, :, :].astype(np.float64)
    return (diff**2).sum(axis=2).min(axis=1)


@st.composite
def coreset_problems(draw):
    """(features (N, d) float32, labeled (N,) bool, budget)."""
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 4))
    features = draw(arrays(np.float32, (n, d), elements=st.floats(-10, 10, width=32)))
    labeled = draw(arrays(np.bool_, n))
    budget = draw(st.integers(0, n + 3))
    return features, labeled, budget


def three_clusters() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    return np.concatenate([c + rng.normal(scale=0.1, size=(30, 2)) for c in centres]).astype(np.float32)


def test_coreset_picks_the_two_far_clusters_first():
    features = three_clusters()
    labeled = np.zeros(90, dtype=bool)
    labeled[0] = True  # one point of cluster A (rows 0-29)
    picks = select_coreset(features, labeled, budget=2)
    assert sorted(picks // 30) == [1, 2]


def test_coreset_without_labels_starts_from_a_seeded_point_and_covers_all_clusters():
    features = three_clusters()
    labeled = np.zeros(90, dtype=bool)
    picks = select_coreset(features, labeled, budget=3, random_state=5)
    assert sorted(picks // 30) == [0, 1, 2]
    np.testing.assert_array_equal(picks, select_coreset(features, labeled, budget=3, random_state=5))


def test_coreset_budget_zero_and_all_labelled_give_no_picks():
    features = three_clusters()
    assert select_coreset(features, np.zeros(90, dtype=bool), budget=0).shape == (0,)
    assert select_coreset(features, np.ones(90, dtype=bool), budget=5).shape == (0,)


def test_coreset_is_accurate_far_from_the_origin():
    # Without centring, float32 |x|^2 - 2x.c + |c|^2 at 1e5 from the origin cannot tell these clusters apart.
    features = three_clusters() + np.float32(1e5)
    labeled = np.zeros(90, dtype=bool)
    labeled[0] = True
    assert sorted(select_coreset(features, labeled, budget=2) // 30) == [1, 2]


def test_coreset_rejects_a_labeled_mask_of_the_wrong_length():
    with pytest.raises(ValueError, match="labeled"):
        select_coreset(three_clusters(), np.zeros(10, dtype=bool), budget=2)


@settings(max_examples=100, deadline=None)
@given(coreset_problems())
def test_coreset_picks_are_unique_unlabelled_and_fill_the_budget(problem):
    features, labeled, budget = problem
    picks = select_coreset(features, labeled, budget)
    assert picks.dtype == np.int64
    assert len(picks) == min(budget, int((~labeled).sum()))
    assert len(set(picks.tolist())) == len(picks)
    assert not labeled[picks].any()


@settings(max_examples=100, deadline=None)
@given(coreset_problems())
def test_coreset_covering_radius_never_grows_as_picks_are_added(problem):
    features, labeled, budget = problem
    picks = select_coreset(features, labeled, budget)
    radii = [
        sq_dist_to_nearest(features, features[labeled | np.isin(np.arange(len(features)), picks[:k])]).max()
        for k in range(len(picks) + 1)
        if labeled.any() or k > 0
    ]
    assert all(later <= earlier for earlier, later in zip(radii, radii[1:]))


@settings(max_examples=100, deadline=None)
@given(coreset_problems())
def test_each_coreset_pick_is_the_farthest_point_from_the_centres_so_far(problem):
    features, labeled, budget = problem
    picks = select_coreset(features, labeled, budget)
    centres = labeled.copy()
    unlabeled = ~labeled
    for pick in picks:
        if centres.any():
            sq = sq_dist_to_nearest(features, features[centres])
            # float32 arithmetic in the implementation; distances here are exact.
            assert sq[pick] >= sq[unlabeled & ~centres].max() - 1e-3 * (1 + sq.max())
        centres[pick] = True


def greedy_k_center(features: np.ndarray, labeled: np.ndarray, budget: int) -> list[int]:
    """Reference: the textbook greedy k-center in float64, recomputing every distance at every pick."""
    centres, picks = labeled.copy(), []
    for _ in range(min(budget, int((~labeled).sum()))):
        sq = sq_dist_to_nearest(features, features[centres])
        sq[centres] = -np.inf
        picks.append(int(np.argmax(sq)))
        centres[picks[-1]] = True
    return picks


@pytest.mark.parametrize("block_rows", [1, 7, 64, 8192])
def test_lazily_updated_blocks_pick_exactly_what_full_greedy_picks(block_rows):
    rng = np.random.default_rng(block_rows)
    # Clustered, like penultimate-layer features: a new centre changes many rows of some blocks and none of others.
    features = (rng.normal(size=(6, 8))[rng.integers(6, size=500)] + 0.3 * rng.normal(size=(500, 8))).astype(np.float32)
    labeled = rng.random(500) < 0.05
    x = torch.from_numpy(features - features.mean(axis=0))
    sq = (x * x).sum(dim=1)
    min_sq = _min_sq_dist_to_centres(x, sq, x[torch.from_numpy(labeled)])
    min_sq[torch.from_numpy(labeled)] = -torch.inf
    picks = _LazyDistances(x, sq, min_sq, block_rows=block_rows).picks(40)
    assert picks.tolist() == greedy_k_center(features, labeled, 40)
    assert select_coreset(features, labeled, 40).tolist() == picks.tolist()


@pytest.mark.parametrize("block_elements", [1, 100, 5_000, 1 << 20])
def test_distances_to_the_labelled_set_do_not_depend_on_the_block_size(block_elements):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(300, 5)).astype(np.float32))
    centres = x[:37]
    got = _min_sq_dist_to_centres(x, (x * x).sum(dim=1), centres, block_elements=block_elements)
    np.testing.assert_allclose(got.numpy(), sq_dist_to_nearest(x.numpy(), centres.numpy()), rtol=1e-4, atol=1e-4)
