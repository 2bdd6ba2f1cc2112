"""Is the dataset an annotator collects with HALI better training data? Learning curves on a held-out split.

For one labelling order (a :class:`~ml_backend.simulation.efficiency.Replay`'s ``order``), a fresh head is
trained on the first N labels for each N of a grid and scored on the test cells. The area under the
accuracy-vs-N curve, compared with the ``sequential`` control's, is the paper's effectiveness figure
(+4.34% for N < 200).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from ml_backend.model.context import smooth_proba
from ml_backend.model.learners import make_learner

LABEL_GRID = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000)


def label_grid(max_labels: int, grid: tuple[int, ...] = LABEL_GRID) -> list[int]:
    """The grid's label counts up to ``max_labels``, ending at ``max_labels`` itself."""
    return sorted({n for n in grid if n < max_labels} | {max_labels})


def learning_curve(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    order: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    grid: list[int],
    n_classes: int,
    optimizer: str = "adam",
    random_state: int = 0,
    max_epochs: int = 100,
    learner: str = "mlp",
    test_neighbours: np.ndarray | None = None,
    smooth_alpha: float = 1.0,
) -> dict[str, list[float]]:
    """Test accuracy and balanced accuracy (one per N in ``grid``) of ``learner`` models trained on ``order[:N]``.

    ``x_pool`` (P, d), ``y_pool`` (P,), ``order`` (L,) int indices into the pool; ``x_test`` (T, d),
    ``y_test`` (T,). An N beyond ``len(order)`` uses every label collected. With ``test_neighbours`` (T, k)
    the test probabilities are smoothed over them with ``smooth_alpha`` before the argmax.
    """
    acc, bacc = [], []
    for n in grid:
        idx = order[:n]
        head = make_learner(learner, n_classes, optimizer=optimizer, max_epochs=max_epochs, random_state=random_state)
        proba = head.fit(x_pool[idx], y_pool[idx]).predict_proba(x_test)
        if test_neighbours is not None:
            proba = smooth_proba(proba, test_neighbours, smooth_alpha)
        pred = proba.argmax(axis=1)
        acc.append(float(accuracy_score(y_test, pred)))
        with warnings.catch_warnings():  # a class never predicted is a score of 0 for it, as intended
            warnings.simplefilter("ignore")
            bacc.append(float(balanced_accuracy_score(y_test, pred)))
    return {"accuracy": acc, "balanced_accuracy": bacc}


def curve_area(grid: list[int], values: list[float], max_n: int | None = None) -> float:
    """Mean height of the curve (trapezoid area / N span) over grid points with N <= ``max_n``."""
    n = np.asarray(grid, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    keep = n <= (max_n if max_n is not None else n.max())
    n, v = n[keep], v[keep]
    if len(n) < 2:
        return float(v.mean()) if len(v) else float("nan")
    return float(np.trapezoid(v, n) / (n[-1] - n[0]))
