"""Query strategies: one contract for every registered name."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_backend.ordering.diverse import assign_to_centres
from ml_backend.ordering.relevance import RelevanceParams
from ml_backend.ordering.strategies import STRATEGIES, get_strategy, needs_mc_passes, query, weighted_k_center

N_CELLS = 60


def problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (60, 4) float32, proba (60, 3) float32, labeled (60,) bool with 20 labelled)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(N_CELLS, 4)).astype(np.float32)
    proba = rng.dirichlet(np.ones(3), size=N_CELLS).astype(np.float32)
    labeled = np.zeros(N_CELLS, dtype=bool)
    labeled[rng.choice(N_CELLS, size=20, replace=False)] = True
    return features, proba, labeled


def passes(seed: int = 0, n_passes: int = 5) -> np.ndarray:
    """(5, 60, 3) float32: stochastic passes, noisy around the :func:`problem` probabilities."""
    rng = np.random.default_rng(seed + 100)
    logits = np.log(problem(seed)[1])[None] + rng.normal(scale=0.7, size=(n_passes, N_CELLS, 3))
    return (np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("proba_kind", ["proba", "passes", "no-proba"])
@pytest.mark.parametrize("budget", [0, 7, 40, 100])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_picks_unique_unlabelled_cells_within_budget_deterministically(name, budget, proba_kind):
    features, proba, labeled = problem()
    strategy = get_strategy(name)
    proba_or_none = {"proba": proba, "passes": passes(), "no-proba": None}[proba_kind]
    picks = strategy(features, proba_or_none, labeled, budget, 3)
    assert picks.dtype.kind == "i"
    assert len(picks) == min(budget, int((~labeled).sum()))
    assert len(set(picks.tolist())) == len(picks)
    assert not labeled[picks].any()
    np.testing.assert_array_equal(picks, strategy(features, proba_or_none, labeled, budget, 3))


def test_entropy_picks_the_most_uncertain_cell_first():
    proba = np.array([[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    picks = get_strategy("entropy")(np.zeros((4, 2)), proba, np.zeros(4, dtype=bool), 4, 0)
    assert picks.tolist() == [1, 2, 0, 3]


def test_margin_picks_the_closest_call_first_and_skips_labelled():
    proba = np.array([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0], [0.9, 0.1, 0.0], [0.45, 0.1, 0.45]])
    labeled = np.array([True, False, False, False])
    picks = get_strategy("margin")(np.zeros((4, 2)), proba, labeled, 3, 0)
    assert picks.tolist() == [3, 1, 2]


def test_entropy_without_probabilities_falls_back_to_coreset():
    features, _, labeled = problem()
    np.testing.assert_array_equal(
        get_strategy("entropy")(features, None, labeled, 5, 0), get_strategy("coreset")(features, None, labeled, 5, 0)
    )


def test_sequential_takes_unlabelled_cells_in_index_order():
    labeled = np.array([True, False, True, False, False])
    assert get_strategy("sequential")(np.zeros((5, 1)), None, labeled, 2, 0).tolist() == [1, 3]


def test_random_depends_on_the_seed():
    features, proba, labeled = problem()
    random = get_strategy("random")
    assert random(features, proba, labeled, 10, 0).tolist() != random(features, proba, labeled, 10, 1).tolist()


def test_unknown_strategy_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'bald'.*coreset.*entropy.*margin.*random.*sequential"):
        get_strategy("bald")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_query_gives_one_weight_per_pick_or_none(name):
    features, _, labeled = problem()
    picks, weights = query(get_strategy(name), features, passes(), labeled, 10, 0)
    assert not labeled[picks].any() and len(set(picks.tolist())) == len(picks)
    assert weights is None or weights.shape == picks.shape
    # relevance's tile score counts every unlabelled cell; the others respect the budget
    assert len(picks) == (int((~labeled).sum()) if name == "relevance" else 10)


def test_strategies_other_than_relevance_use_the_mean_of_the_passes():
    features, _, labeled = problem()
    p = passes()
    for name in ("entropy", "margin"):
        strategy = get_strategy(name)
        mean = strategy(features, p.mean(0), labeled, 20, 0)
        np.testing.assert_array_equal(strategy(features, p, labeled, 20, 0), mean)


def test_only_relevance_and_hybrid_want_mc_passes():
    assert {name for name, s in STRATEGIES.items() if needs_mc_passes(s)} == {"relevance", "hybrid"}


def test_params_reach_the_relevance_strategies_and_the_others_ignore_them():
    params = RelevanceParams(gamma=0.0)
    assert get_strategy("relevance", params).params == params and get_strategy("hybrid", params).params == params
    assert get_strategy("coreset", params) is STRATEGIES["coreset"]


def test_relevance_puts_rare_class_cells_first_then_uncertain_ones():
    p = np.zeros((4, 4, 2))
    p[:, 0] = [0.9, 0.1]  # certain, common
    p[:, 1] = [[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]]  # U_c 0.5, mean p(1) 0.5: uncertain AND rare
    p[:, 2] = [0.7, 0.3]  # certain, p(1) 0.3 > 0.2: rare flag
    p[:, 3] = [[0.95, 0.05], [0.85, 0.15], [0.9, 0.1], [0.45, 0.55]]  # U_c 0.75, mean p(1) 0.21: both
    picks = get_strategy("relevance", RelevanceParams(rare_class=1))(np.zeros((4, 1)), p, np.zeros(4, bool), 4, 0)
    assert picks.tolist() == [1, 3, 2, 0]


def three_clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features (130, 2) and classes: two wide common clusters (60 each) and a tight rare one (10) between."""
    rng = np.random.default_rng(seed)
    common0 = rng.normal([-10, 0], 3.0, size=(60, 2))
    common1 = rng.normal([10, 0], 3.0, size=(60, 2))
    rare = rng.normal([0, 6], 0.5, size=(10, 2))
    return np.concatenate([common0, common1, rare]).astype(np.float32), np.repeat([0, 1, 2], [60, 60, 10])


def test_hybrid_picks_the_rare_cluster_early_where_coreset_does_not():
    x, y = three_clusters()
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[0, 1, 60, 61, 120]] = True  # two labels per common class, one of the rare class
    # The head's belief, as MC passes would give it: the rare cells have p(rare) about 0.5
    p = np.tile(np.eye(3)[y] * 0.8 + 0.1, (4, 1, 1)) / 1.1
    hybrid = get_strategy("hybrid", RelevanceParams(rare_class=2))(x, p, labeled, 10, 0)
    coreset = get_strategy("coreset")(x, p, labeled, 10, 0)
    # x11 weight: the tight rare cluster comes first and keeps coming back while spread stays coreset's
    assert y[hybrid[:2]].tolist() == [2, 2] and (y[hybrid] == 2).sum() >= 3 and {0, 1} <= set(y[hybrid].tolist())
    assert (y[coreset] != 2).all(), "coreset spends its picks on the edges of the wide clusters"
    assert len(set(hybrid.tolist())) == 10 and not labeled[hybrid].any()


def test_hybrid_without_a_rare_signal_is_coreset_on_distances():
    x, y = three_clusters()
    labeled = np.zeros(len(y), dtype=bool)
    labeled[[0, 60]] = True
    flat = np.full((3, len(y), 3), 1 / 3)  # every cell equally (un)certain: weights all equal
    hybrid = get_strategy("hybrid", RelevanceParams(rare_class=2, gamma=0.0))(x, flat, labeled, 8, 0)
    np.testing.assert_array_equal(hybrid, weighted_k_center(x, labeled, np.ones(len(y)), 8))
    np.testing.assert_array_equal(hybrid, get_strategy("coreset")(x, None, labeled, 8, 0))


def test_weighted_k_center_multiplies_distances_by_the_weight():
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    labeled = np.array([True, False, False, False])
    assert weighted_k_center(x, labeled, np.ones(4), 3).tolist() == [3, 2, 1]
    # cell 1 is 1 away, cell 3 10 away: weight 11 on cell 1 puts it first
    assert weighted_k_center(x, labeled, np.array([1.0, 11.0, 1.0, 1.0]), 1).tolist() == [1]


def clusters_with_an_outlier() -> tuple[np.ndarray, np.ndarray]:
    """Three tight 2-d clusters of 30 cells (one labelled cell in the first) and one far outlier (index 90)."""
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.r_[np.repeat(centres, 30, axis=0) + rng.normal(scale=0.5, size=(90, 2)), [[60.0, 60.0]]]
    labeled = np.zeros(91, dtype=bool)
    labeled[0] = True
    return x.astype(np.float32), labeled


def test_coreset_chases_the_outlier_and_density_does_not():
    x, labeled = clusters_with_an_outlier()
    assert get_strategy("coreset")(x, None, labeled, 1, 0)[0] == 90
    picks = get_strategy("density")(x, None, labeled, 2, 0)
    assert 90 not in picks.tolist()
    assert {int(p) // 30 for p in picks} == {1, 2}  # the two unlabelled clusters first


def test_cluster_picks_one_cell_per_cluster_and_the_most_uncertain_one():
    x, labeled = clusters_with_an_outlier()
    proba = np.tile([0.95, 0.05], (91, 1))
    proba[[40, 75]] = [0.55, 0.45]  # the closest calls of clusters 1 and 2
    picks = get_strategy("cluster")(x, proba, labeled, 3, 0).tolist()
    assert 40 in picks and 75 in picks
    assert len({min(p // 30, 3) for p in picks}) == 3


def test_spread_deals_picks_round_robin_over_groups_fewest_labels_first():
    x, labeled = clusters_with_an_outlier()
    groups = np.r_[np.zeros(45, int), np.ones(46, int)]  # group 0 holds the labelled cell
    picks = get_strategy("spread")(x, None, labeled, 6, 0, groups=groups)
    dealt = groups[picks].tolist()
    n_alternating = 2 * min(dealt.count(0), dealt.count(1))
    assert dealt[:n_alternating] == [1, 0] * (n_alternating // 2)  # group 1 (no labels yet) leads each round
    assert set(picks.tolist()) == set(get_strategy("cluster")(x, None, labeled, 6, 0).tolist())


def test_query_hands_groups_only_to_strategies_that_want_them():
    x, labeled = clusters_with_an_outlier()
    groups = np.r_[np.zeros(45, int), np.ones(46, int)]
    picks, weights = query(get_strategy("spread"), x, None, labeled, 4, 0, groups=groups)
    assert groups[picks[0]] == 1 and (weights == 0).all()
    picks, _ = query(get_strategy("coreset"), x, None, labeled, 4, 0, groups=groups)
    assert len(picks) == 4


def test_cluster_takes_the_closest_call_from_the_inner_half_not_the_clusters_oddball():
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(scale=0.5, size=(40, 2)), [[4.0, 4.0]]].astype(np.float32)  # one cluster + its oddball
    proba = np.tile([0.9, 0.1], (41, 1))
    proba[40] = [0.5, 0.5]  # the oddball is the coin flip
    proba[np.argsort(np.linalg.norm(x[:40], axis=1))[3]] = [0.6, 0.4]  # a central cell is the runner-up
    pick = get_strategy("cluster")(x, proba, np.zeros(41, dtype=bool), 1, 0)
    assert pick.tolist() != [40] and proba[pick[0]].tolist() == [0.6, 0.4]


@given(st.integers(1, 300), st.integers(1, 12), st.integers(0, 10_000))
def test_assigning_rows_to_centres_finds_each_rows_nearest_centre(n_rows, k, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n_rows, 6)) * 3 + 5).astype(np.float32)
    centres = x[rng.choice(n_rows, size=min(k, n_rows), replace=False)] + rng.normal(size=(min(k, n_rows), 6))
    cluster, dist = assign_to_centres(x, centres.astype(np.float32))
    exact = np.linalg.norm(x[:, None, :].astype(np.float64) - centres[None, :, :].astype(np.float32), axis=2)
    np.testing.assert_allclose(dist, exact.min(axis=1), atol=1e-3)  # float32 sums: near, not exact
    np.testing.assert_allclose(exact[np.arange(n_rows), cluster], exact.min(axis=1), atol=1e-3)
