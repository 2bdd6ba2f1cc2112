"""Query strategies: which unlabelled cells are most useful to label next.

Every strategy has the same signature (:data:`Strategy`) and is registered by name in
:data:`STRATEGIES`, as modAL's ``query_strategy=``, so a setting can pick one with :func:`get_strategy`::

    strategy(features (N, d) float, proba (N, K) | (T, N, K) float | None, labeled (N,) bool, budget,
             random_state) -> (min(budget, #unlabelled),) int64 indices: unique, unlabelled only, most useful first

``proba`` is either the head's probabilities (N, K) or T stochastic passes (T, N, K) (MC dropout,
:meth:`ml_backend.model.head.HeadClassifier.predict_proba_mc`); strategies other than the two below use the
mean over passes. A strategy with ``needs_passes`` True wants the passes (:func:`needs_mc_passes`).

- ``coreset``: greedy k-center on ``features`` (:func:`ml_backend.ordering.coreset.select_coreset`).
- ``entropy``: highest predictive entropy first.
- ``margin``: smallest gap between the two most probable classes first.
- ``random``: a seeded random sample.
- ``sequential``: unlabelled cells in index order (the control).
- ``relevance``: Sadafi et al. 2019's cell score (:mod:`ml_backend.ordering.relevance`), highest first; every
  unlabelled cell is worth its score to its tile, so tiles rank by the paper's tile score.
- ``hybrid``: greedy k-center on ``features`` where each cell's distance is multiplied by 1 + its
  relevance score (:func:`weighted_k_center`): spread like coreset, uncertain and rare cells first;
  tiles are served in the order of their earliest pick.
- ``density``: greedy k-center where each cell's distance is multiplied by its feature-space density times
  (1 + its uncertainty) (:mod:`ml_backend.ordering.diverse`): coreset's spread without its outliers.
- ``cluster``: k-means on the unlabelled cells, the most uncertain cell of each cluster's inner half, largest first.
- ``spread``: ``cluster``'s picks dealt round-robin over ``groups`` (source images, slides), the groups with
  the fewest labels first, so consecutive tasks come from different images. Without groups: ``cluster``.

``density``, ``cluster``, ``spread`` and ``hybrid`` serve tiles in the order of their earliest pick (their
:func:`query` weights are 0); the others by how many picks a tile holds.

The two relevance strategies are frozen dataclasses holding :class:`RelevanceParams`;
``get_strategy(name, params)`` returns one with other params. :func:`query` runs a strategy and says what
each pick is worth to its tile (:func:`ml_backend.ordering.ranking.rank_tiles`'s ``weights``).

``entropy``, ``margin``, ``relevance`` and ``hybrid`` need ``proba``; before any model exists it is None
and they fall back to ``coreset``, which needs only features. Ties are broken by index, so every
strategy is deterministic.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ml_backend.ordering.coreset import select_coreset
from ml_backend.ordering.diverse import cluster_picks, feature_density, spread_over_groups, uncertainty
from ml_backend.ordering.relevance import RelevanceParams, as_passes, cell_scores

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
    p = np.clip(_mean_proba(proba, labeled), 1e-12, 1.0)
    neg_entropy = (p * np.log(p)).sum(axis=1)
    return _top_unlabeled(neg_entropy, labeled, budget)


def margin_strategy(
    features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
) -> np.ndarray:
    """Unlabelled rows with the smallest top-1 minus top-2 probability first; coreset when ``proba`` is None."""
    if proba is None:
        return _coreset_fallback("margin", features, labeled, budget, random_state)
    p = _mean_proba(proba, labeled)
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


@dataclass(frozen=True)
class RelevanceStrategy:
    """Unlabelled cells by descending relevance score (:func:`ml_backend.ordering.relevance.cell_scores`), ties by index."""

    params: RelevanceParams = RelevanceParams()
    needs_passes: ClassVar[bool] = True
    scores_every_cell: ClassVar[bool] = True

    def __call__(
        self, features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
    ) -> np.ndarray:
        if proba is None:
            return _coreset_fallback("relevance", features, labeled, budget, random_state)
        return _top_unlabeled(-self.scores(proba, labeled), labeled, budget)

    def scores(self, proba: np.ndarray, labeled: np.ndarray) -> np.ndarray:
        """Relevance score (N,) float64 of every cell, from (N, K) or (T, N, K) ``proba``."""
        return cell_scores(as_passes(proba, len(labeled)), self.params)

    def weights(self, proba: np.ndarray | None, labeled: np.ndarray, picks: np.ndarray) -> np.ndarray | None:
        """What each pick adds to its tile's score: its relevance score (the paper's tile score)."""
        return None if proba is None else self.scores(proba, labeled)[picks]


@dataclass(frozen=True)
class HybridStrategy(RelevanceStrategy):
    """Greedy k-center on ``features`` where a cell's distance to the labelled set counts ``1 + score`` times.

    Each pick is the unlabelled cell maximising ``(1 + relevance score) x distance to its nearest
    labelled-or-picked cell``. Distance keeps the picks spread over feature space, so a class that no
    model has seen (it cannot be flagged rare: its probability is near 0) is still met early; the
    score puts uncertain cells (x2) and cells of the rare class (x11 with the default gamma 10)
    ahead of equally distant ones. Before any model exists it is coreset.
    """

    scores_every_cell: ClassVar[bool] = False

    def __call__(
        self, features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int
    ) -> np.ndarray:
        if proba is None:
            return _coreset_fallback("hybrid", features, labeled, budget, random_state)
        unlabeled = _unlabeled_indices(labeled, budget)
        return weighted_k_center(features, labeled, 1.0 + self.scores(proba, labeled), min(budget, len(unlabeled)))

    def weights(self, proba: np.ndarray | None, labeled: np.ndarray, picks: np.ndarray) -> np.ndarray | None:
        """All 0 (None, a count, before any model): tiles are served in the order of their earliest pick.

        Counting picks favours classes spread widely over feature space; with it, coreset once served
        no cell of a third class within 30 labels (docs/simulation.md). The first picks are the far
        and the relevant ones.
        """
        return None if proba is None else np.zeros(len(picks))


@dataclass(frozen=True)
class DiverseStrategy:
    """``density`` (``kind="density"``), ``cluster`` or ``spread``; see the module docstring.

    Tiles are served by their earliest pick (weights 0): the first picks are the representative ones.
    """

    kind: str = "cluster"
    needs_groups: ClassVar[bool] = True

    def __call__(
        self, features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int, random_state: int,
        groups: np.ndarray | None = None,
    ) -> np.ndarray:
        unlabeled = _unlabeled_indices(labeled, budget)
        n_picks = min(budget, len(unlabeled))
        p = None if proba is None else _mean_proba(proba, labeled)
        if self.kind == "density":
            weight = feature_density(features, random_state=random_state) * (1.0 + uncertainty(p, len(labeled)))
            return weighted_k_center(features, labeled, weight, n_picks)
        picks = cluster_picks(features, p, labeled, n_picks, random_state)
        if self.kind == "spread" and groups is not None:
            return spread_over_groups(picks, groups, labeled)
        return picks

    def weights(self, proba: np.ndarray | None, labeled: np.ndarray, picks: np.ndarray) -> np.ndarray:
        return np.zeros(len(picks))


def weighted_k_center(features: np.ndarray, labeled: np.ndarray, weight: np.ndarray, n_picks: int) -> np.ndarray:
    """``n_picks`` unlabelled row indices (int64, pick order) of greedy k-center with weighted distances.

    Each pick maximises ``weight[i] * distance(features[i], nearest labelled or picked row)``;
    ``features`` (N, d) float (Euclidean), ``labeled`` (N,) bool, ``weight`` (N,) float > 0. With
    nothing labelled the first pick is the heaviest row (lowest index on ties). Ties: lowest index.
    """
    x = np.asarray(features, dtype=np.float32)
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    w2 = np.square(np.asarray(weight, dtype=np.float64))
    min_sq = _min_sq_dist(x, x[labeled]) if labeled.any() else np.full(len(x), np.inf)
    picks = np.empty(n_picks, dtype=np.int64)
    taken = labeled.copy()
    for i in range(n_picks):
        key = np.where(taken, -np.inf, np.where(np.isinf(min_sq), w2 * 1e30, w2 * min_sq))
        pick = int(np.argmax(key))
        picks[i], taken[pick] = pick, True
        np.minimum(min_sq, np.square(x - x[pick]).sum(axis=1), out=min_sq)
    return picks


def _min_sq_dist(x: np.ndarray, centres: np.ndarray, block: int = 4096) -> np.ndarray:
    """Squared distance (N,) float64 from each row of ``x`` (N, d) to its nearest row of ``centres`` (L, d)."""
    out = np.empty(len(x))
    ct = torch.from_numpy(np.ascontiguousarray(centres))
    for r0 in range(0, len(x), block):
        xr = torch.from_numpy(np.ascontiguousarray(x[r0 : r0 + block]))
        best = torch.full((len(xr),), torch.inf)
        for c0 in range(0, len(ct), block):
            best = torch.minimum(best, torch.cdist(xr, ct[c0 : c0 + block]).amin(dim=1))
        out[r0 : r0 + block] = best.double().numpy() ** 2
    return out


STRATEGIES: dict[str, Strategy] = {
    "coreset": coreset_strategy,
    "entropy": entropy_strategy,
    "margin": margin_strategy,
    "random": random_strategy,
    "sequential": sequential_strategy,
    "relevance": RelevanceStrategy(),
    "hybrid": HybridStrategy(),
    "density": DiverseStrategy("density"),
    "cluster": DiverseStrategy("cluster"),
    "spread": DiverseStrategy("spread"),
}


def get_strategy(name: str, params: RelevanceParams | None = None) -> Strategy:
    """The strategy registered as ``name``; ValueError naming the valid ones otherwise.

    ``params`` replaces the relevance parameters of ``relevance`` and ``hybrid``; other strategies
    have none and ignore it.
    """
    try:
        strategy = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown query strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    if params is not None and isinstance(strategy, RelevanceStrategy):
        return dataclasses.replace(strategy, params=params)
    return strategy


def needs_mc_passes(strategy: Strategy) -> bool:
    """True when ``strategy`` wants T stochastic passes (T, N, K) as ``proba`` rather than (N, K)."""
    return bool(getattr(strategy, "needs_passes", False))


def query(
    strategy: Strategy, features: np.ndarray, proba: np.ndarray | None, labeled: np.ndarray, budget: int,
    random_state: int, groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(picks, weights)`` for :func:`ml_backend.ordering.ranking.rank_tiles`, as the retrain job and the simulation use them.

    ``groups`` (N,) labels each cell's source image or slide; strategies with ``needs_groups`` (``spread``)
    get it, the others never see it.

    ``weights`` (P,) float is what each pick adds to its tile's score; None means 1 each (a count). A
    strategy whose tile score sums over every unlabelled cell (``relevance``: the paper's tile score)
    picks all of them whatever ``budget`` is, so no tile loses a cell it would have counted.
    """
    if getattr(strategy, "scores_every_cell", False) and proba is not None:
        budget = int((~np.asarray(labeled, dtype=bool)).sum())
    if getattr(strategy, "needs_groups", False):
        picks = strategy(features, proba, labeled, budget, random_state, groups=groups)
    else:
        picks = strategy(features, proba, labeled, budget, random_state)
    weights = getattr(strategy, "weights", None)
    return picks, None if weights is None else weights(proba, labeled, picks)


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


def _mean_proba(proba: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """(N, K) float64: ``proba`` itself, or the mean of its (T, N, K) stochastic passes."""
    return as_passes(proba, len(labeled)).mean(axis=0)
