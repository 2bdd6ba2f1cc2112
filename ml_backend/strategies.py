"""Query strategies: which unlabelled cells are most useful to label next.

Every strategy has the same signature (:data:`Strategy`) and is registered by name in
:data:`STRATEGIES`, as modAL's ``query_strategy=``, so a setting can pick one with :func:`get_strategy`::

    strategy(features (N, d) float, proba (N, K) float | None, labeled (N,) bool, budget, random_state)
        -> (min(budget, #unlabelled),) int64 indices: unique, unlabelled only, most useful first

- ``coreset``: greedy k-center on ``features`` (:func:`ml_backend.coreset.select_coreset`).
- ``entropy``: highest predictive entropy first.
- ``margin``: smallest gap between the two most probable classes first.
- ``random``: a seeded random sample.
- ``sequential``: unlabelled cells in index order (the control).

``entropy`` and ``margin`` need ``proba``; before any model exists it is None and they fall back to
``coreset``, which needs only features. Ties are broken by index, so every strategy is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ml_backend.coreset import select_coreset

logger = logging.getLogger(__name__)

Strategy = Callable[[np.ndarray, "np.ndarray | None", np.ndarray, int, int], np.ndarray]


def coreset_strategy(
    features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    """Greedy k-center picks on ``features``; ``proba`` is ignored."""
    return select_coreset(features, labeled, budget, random_state)


def entropy_strategy(
    features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    """Unlabelled rows with the highest entropy of ``proba`` (N, K) first; coreset when ``proba`` is None."""
    if proba is None:
        return _coreset_fallback("entropy", features, labeled, budget, random_state)
    p = np.clip(_check_proba(proba, labeled), 1e-12, 1.0)
    neg_entropy = (p * np.log(p)).sum(axis=1)
    return _top_unlabeled(neg_entropy, labeled, budget)


def margin_strategy(
    features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    """Unlabelled rows with the smallest top-1 minus top-2 probability first; coreset when ``proba`` is None."""
    if proba is None:
        return _coreset_fallback("margin", features, labeled, budget, random_state)
    p = _check_proba(proba, labeled)
    if p.shape[1] < 2:
        return _top_unlabeled(np.zeros(len(p)), labeled, budget)
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return _top_unlabeled(top2[:, 1] - top2[:, 0], labeled, budget)


def random_strategy(
    features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    """A uniform random sample of the unlabelled rows, seeded by ``random_state``."""
    unlabeled = _unlabeled_indices(labeled, budget)
    rng = np.random.default_rng(random_state)
    return rng.permutation(unlabeled)[: min(budget, len(unlabeled))]


def sequential_strategy(
    features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    """The first ``budget`` unlabelled rows in index order."""
    return _unlabeled_indices(labeled, budget)[:budget]


STRATEGIES: dict[str, Strategy] = {
    "coreset": coreset_strategy,
    "entropy": entropy_strategy,
    "margin": margin_strategy,
    "random": random_strategy,
    "sequential": sequential_strategy,
}


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; ValueError naming the valid ones otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown query strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


def _coreset_fallback(
    name: str, features: np.ndarray, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    logger.info("query strategy %s has no probabilities yet; using coreset on features", name)
    return select_coreset(features, labeled, budget, random_state)


def _top_unlabeled(score: np.ndarray, labeled: np.ndarray, budget: int) -> np.ndarray:
    """Unlabelled indices ordered by ascending ``score`` (N,), ties by index; at most ``budget``."""
    unlabeled = _unlabeled_indices(labeled, budget)
    order = np.argsort(score[unlabeled], kind="stable")
    return unlabeled[order[:budget]]


def _unlabeled_indices(labeled: np.ndarray, budget: int) -> np.ndarray:
    """Ascending int64 indices where ``labeled`` (N,) bool is False; checks the arguments."""
    mask = np.asarray(labeled)
    if mask.ndim != 1 or mask.dtype != np.bool_:
        raise ValueError(f"labeled must be a 1-D bool array, got {mask.dtype} {mask.shape}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    return np.flatnonzero(~mask).astype(np.int64)


def _check_proba(proba: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or len(p) != len(labeled):
        raise ValueError(f"proba must be (N, K) with N = {len(labeled)}, got shape {p.shape}")
    return p
