"""Dawid-Skene consensus: each cell's label, weighing each annotator by how reliable they are per class (pure).

Dawid & Skene (1979), "Maximum likelihood estimation of observer error-rates using the EM algorithm". Each
annotator ``a`` has a confusion matrix ``pi_a[k, l]`` = P(a says l | the truth is k); the classes have priors
``p[k]``. EM starts from the majority vote and alternates:

- M step: ``p`` and every ``pi_a`` from the current soft truths ``T`` (cells x classes), plus prior counts:
  ``smoothing`` in every entry and ``diagonal_prior`` on the diagonal, so an annotator seen on few cells is
  taken to be right rather than arbitrary (without it, EM on a handful of cells drifts a class that one vote
  supports into a tie with another);
- E step: ``T[i, k]`` proportional to ``p[k] * prod_a pi_a[k, label_a(i)]`` over the annotators of cell ``i``;

until ``T`` moves less than ``tol``. Where the majority is clear and the annotators are alike it agrees with the
majority; it differs where a reliable annotator outvotes two who often confuse the classes at hand.

Why written here rather than taken from a library: crowd-kit, the maintained implementation, installs pandas,
pyarrow, nltk and transformers for these forty lines of numpy. Its EM is the same algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def dawid_skene(votes: Mapping[str, Mapping[str, str]], max_iter: int = 100, tol: float = 1e-6,
                smoothing: float = 0.01, diagonal_prior: float = 1.0) -> dict[str, tuple[str, float]]:
    """Cell id -> ``(label, posterior probability)`` from ``votes``: cell id -> {annotator: label}.

    Cells without votes are left out. A tie in the posterior goes to the label that sorts first. Deterministic.
    """
    cells = [c for c, v in votes.items() if v]
    if not cells:
        return {}
    classes = sorted({label for c in cells for label in votes[c].values()})
    annotators = sorted({a for c in cells for a in votes[c]})
    k_of = {k: i for i, k in enumerate(classes)}
    a_of = {a: i for i, a in enumerate(annotators)}
    # (vote index) -> cell row, annotator, class: the observations, shape (n_votes,) each
    rows, who, said = (np.array(x, dtype=np.int64) for x in zip(*(
        (i, a_of[a], k_of[label]) for i, c in enumerate(cells) for a, label in votes[c].items())))
    truth = _majority(rows, said, len(cells), len(classes))
    for _ in range(max_iter):
        prior, confusion = _m_step(truth, rows, who, said, len(annotators), smoothing, diagonal_prior)
        updated = _e_step(prior, confusion, rows, who, said, len(cells))
        moved = float(np.abs(updated - truth).max())
        truth = updated
        if moved < tol:
            break
    best = truth.argmax(axis=1)
    return {c: (classes[best[i]], round(float(truth[i, best[i]]), 6)) for i, c in enumerate(cells)}


def _majority(rows: np.ndarray, said: np.ndarray, n_cells: int, n_classes: int) -> np.ndarray:
    """Soft truths from vote shares, shape (n_cells, n_classes), rows summing to 1."""
    counts = np.zeros((n_cells, n_classes))
    np.add.at(counts, (rows, said), 1.0)
    return counts / counts.sum(axis=1, keepdims=True)


def _m_step(truth: np.ndarray, rows: np.ndarray, who: np.ndarray, said: np.ndarray, n_annotators: int,
            smoothing: float, diagonal_prior: float) -> tuple[np.ndarray, np.ndarray]:
    """Class priors (n_classes,) and confusion matrices (n_annotators, n_classes, n_classes), rows summing to 1."""
    n_classes = truth.shape[1]
    prior = truth.mean(axis=0)
    confusion = np.full((n_annotators, n_classes, n_classes), smoothing) + diagonal_prior * np.eye(n_classes)
    for k in range(n_classes):  # confusion[a, k, l] += T[cell, k] for each vote (cell, a, l)
        np.add.at(confusion[:, k, :], (who, said), truth[rows, k])
    return prior, confusion / confusion.sum(axis=2, keepdims=True)


def _e_step(prior: np.ndarray, confusion: np.ndarray, rows: np.ndarray, who: np.ndarray, said: np.ndarray,
            n_cells: int) -> np.ndarray:
    """Posterior truths (n_cells, n_classes) from the priors and confusions, in log space."""
    log_t = np.tile(np.log(np.maximum(prior, 1e-12)), (n_cells, 1))
    np.add.at(log_t, rows, np.log(confusion[who, :, said]))  # (n_votes, n_classes): log pi_a[k, l] for every k
    log_t -= log_t.max(axis=1, keepdims=True)
    t = np.exp(log_t)
    return t / t.sum(axis=1, keepdims=True)
