"""The HALI paper's efficiency protocol: one balanced patch of about 200 cells, two classes, AI after 20 labels.

van der Wal et al. timed pathologists labelling a patch of about 200 cells with and without the AI's
suggestions, the model having seen the first labels of that patch. :func:`replay_paper_patch` replays it
with the oracle annotator and the campaign's :class:`~ml_backend.simulation.efficiency.TimeModel`:

1. A source image with cells of both classes is drawn (seeded); its cells, in walking order, give the
   patch: the first ``patch_cells / 2`` cells of each class (fewer when a class has fewer), so it is
   balanced and spatially compact.
2. The annotator labels the patch in walking order. The first ``ready_after`` labels are unassisted; then
   the learner, trained on the labels so far and retrained every ``retrain_every`` labels, suggests each
   cell before it is labelled: a correct suggestion costs a review, a wrong one a review and a click.
3. Speed-up = the patch unassisted / as labelled; one task opening either way.

Unlike the campaign there is no query strategy and no other task: it measures the suggestions alone, in the
setting the paper's 5.15x comes from. Binary class maps only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml_backend.model.learners import make_learner
from ml_backend.simulation.efficiency import TimeModel


@dataclass(frozen=True)
class PaperProtocol:
    """The protocol's constants: patch size, labels before suggestions, retraining rule."""

    patch_cells: int = 200
    ready_after: int = 20
    retrain_every: int = 5


def balanced_patch(y: np.ndarray, source: np.ndarray, patch_cells: int, random_state: int) -> np.ndarray:
    """Indices (M,) int64, ascending, of a balanced patch from one source; ``y`` (N,) in {0, 1}, in walking order.

    Sources holding at least ``patch_cells / 2`` cells of each class are preferred; among them (or, if none,
    among the sources with the most cells of their minority class) one is drawn with ``random_state``.
    """
    half = patch_cells // 2
    sources = np.unique(source)
    minority = np.array([min((y[source == s] == c).sum() for c in (0, 1)) for s in sources])
    eligible = sources[minority >= half] if (minority >= half).any() else sources[minority == minority.max()]
    chosen = np.random.default_rng(random_state).choice(eligible)
    cells = np.flatnonzero(source == chosen)
    per_class = min(half, int(minority[sources == chosen][0]))
    keep = np.concatenate([cells[y[cells] == c][:per_class] for c in (0, 1)])
    return np.sort(keep).astype(np.int64)


def replay_paper_patch(
    features: np.ndarray, y: np.ndarray, source: np.ndarray, *, learner: str = "logreg",
    protocol: PaperProtocol = PaperProtocol(), time_model: TimeModel = TimeModel(), random_state: int = 0,
    neighbours: np.ndarray | None = None, smooth_alpha: float = 1.0, optimizer: str = "adam",
) -> dict[str, float | int | str]:
    """One replay of the protocol over cells in walking order: ``features`` (N, d), ``y`` (N,) in {0, 1},
    ``source`` (N,) images; ``neighbours`` (N, k) spatial neighbours for smoothing.

    Returns ``speedup``, ``acceptance_share`` (of the suggestions shown), ``n_cells``, ``n_wrong``, ``source``.
    """
    if np.unique(y).size > 2 or y.max() > 1:
        raise ValueError("the paper protocol needs two classes; pass a binary --classes-map")
    patch = balanced_patch(y, source, protocol.patch_cells, random_state)
    n_wrong, n_shown, model, fitted_on = 0, 0, None, 0
    for i, cell in enumerate(patch.tolist()):
        if i >= protocol.ready_after and (model is None or i - fitted_on >= protocol.retrain_every):
            model = make_learner(learner, 2, random_state=random_state, optimizer=optimizer)
            model.fit(features[patch[:i]], y[patch[:i]])
            fitted_on = i
        if model is not None:
            n_shown += 1
            n_wrong += int(_suggest(model, features, cell, neighbours, smooth_alpha) != y[cell])
    n = len(patch)
    assisted = (time_model.per_task + time_model.unassisted_per_cell * (n - n_shown)
                + time_model.review_per_cell * n_shown + time_model.per_wrong_suggestion * n_wrong)
    return {"source": str(source[patch[0]]), "n_cells": n, "n_shown": n_shown, "n_wrong": n_wrong,
            "acceptance_share": (n_shown - n_wrong) / n_shown if n_shown else float("nan"),
            "speedup": time_model.task_cost(n, None) / assisted}


def _suggest(model, features: np.ndarray, cell: int, neighbours: np.ndarray | None, alpha: float) -> int:
    """The suggested class of ``cell``: the model's argmax, after smoothing over its neighbours when asked."""
    if neighbours is None or alpha >= 1.0:
        return int(model.suggest_proba(features[[cell]])[0].argmax())
    proba = model.suggest_proba(features[np.concatenate([[cell], neighbours[cell]])])
    return int((alpha * proba[0] + (1.0 - alpha) * proba[1:].mean(axis=0)).argmax())  # smooth_proba, one cell
