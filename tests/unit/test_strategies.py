"""Query strategies: one contract for every registered name."""

import numpy as np
import pytest

from ml_backend.strategies import STRATEGIES, get_strategy

N_CELLS = 60


def problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (60, 4) float32, proba (60, 3) float32, labeled (60,) bool with 20 labelled)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(N_CELLS, 4)).astype(np.float32)
    proba = rng.dirichlet(np.ones(3), size=N_CELLS).astype(np.float32)
    labeled = np.zeros(N_CELLS, dtype=bool)
    labeled[rng.choice(N_CELLS, size=20, replace=False)] = True
    return features, proba, labeled


@pytest.mark.parametrize("with_proba", [True, False], ids=["proba", "no-proba"])
@pytest.mark.parametrize("budget", [0, 7, 40, 100])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_picks_unique_unlabelled_cells_within_budget_deterministically(name, budget, with_proba):
    features, proba, labeled = problem()
    strategy = get_strategy(name)
    proba_or_none = proba if with_proba else None
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
