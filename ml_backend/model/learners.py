"""Learners by name: the classifiers the retrain job and ``hali simulate`` can fit on cell features.

Every learner is a scikit-learn style estimator with the same interface (:class:`Learner`)::

    fit(X (N, d), y (N,) int) -> self      predict_proba(X) -> (N, K) float32     predict(X) -> (N,) int64
    transform(X) -> (N, e) float32         the space Coreset and the other query strategies measure
    to_state() -> tensors + plain values   rebuilt by :func:`learner_from_state` (``torch.load(weights_only=True)``)
    n_features_in_, classes_seen_, n_epochs_, best_val_loss_ (None when nothing is held out)

Registered learners (:data:`LEARNERS`, ``HALI_LEARNER``):

- ``mlp``: the paper's 2x32 head (:class:`ml_backend.model.head.HeadClassifier`); ``transform`` gives its
  penultimate features. The only one with MC dropout passes (``predict_proba_mc``), so the only one the
  ``relevance`` and ``hybrid`` strategies can use (:data:`MC_LEARNERS`; the settings refuse other pairs).
- ``logreg``: class-balanced logistic regression on standardised features
  (:class:`ml_backend.model.linear.LogisticClassifier`); ``transform`` gives the standardised input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from ml_backend.model.head import HeadClassifier
from ml_backend.model.linear import LEARNER_NAME as LOGREG
from ml_backend.model.linear import LogisticClassifier


class Learner(Protocol):
    n_features_in_: int
    classes_seen_: np.ndarray
    n_epochs_: int
    best_val_loss_: float | None

    def fit(self, X: np.ndarray, y: np.ndarray) -> Learner: ...
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...
    def suggest_proba(self, X: np.ndarray) -> np.ndarray: ...
    def suggest_from_proba(self, proba: np.ndarray) -> np.ndarray: ...
    def predict(self, X: np.ndarray) -> np.ndarray: ...
    def transform(self, X: np.ndarray) -> np.ndarray: ...
    def to_state(self) -> dict[str, Any]: ...
    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


def _mlp(n_classes: int, random_state: int, optimizer: str, dropout: float, max_epochs: int) -> Learner:
    return HeadClassifier(n_classes, optimizer=optimizer, max_epochs=max_epochs, dropout=dropout,
                          random_state=random_state)


def _logreg(n_classes: int, random_state: int, optimizer: str, dropout: float, max_epochs: int) -> Learner:
    return LogisticClassifier(n_classes, random_state=random_state)


# name -> factory(n_classes, random_state, optimizer, dropout, max_epochs); the head-only arguments are
# ignored by learners without them.
LEARNERS: dict[str, Callable[[int, int, str, float, int], Learner]] = {"mlp": _mlp, LOGREG: _logreg}
MC_LEARNERS = frozenset({"mlp"})  # learners with predict_proba_mc (MC dropout passes)
_FROM_STATE: dict[str, Callable[[Mapping[str, Any]], Learner]] = {
    "mlp": HeadClassifier.from_state, LOGREG: LogisticClassifier.from_state,
}


def make_learner(name: str, n_classes: int, *, random_state: int = 0, optimizer: str = "adam",
                 dropout: float = 0.0, max_epochs: int = 100) -> Learner:
    """An unfitted learner registered as ``name``; ValueError naming the valid ones otherwise.

    ``optimizer``, ``dropout`` and ``max_epochs`` are the ``mlp`` head's; other learners ignore them.
    """
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose one of {sorted(LEARNERS)}")
    return LEARNERS[name](n_classes, random_state, optimizer, dropout, max_epochs)


def supports_mc_passes(name: str) -> bool:
    """True when learner ``name`` gives MC dropout passes (``predict_proba_mc``)."""
    return name in MC_LEARNERS


def learner_name(model: Learner) -> str:
    """The registry name of a fitted or unfitted learner (``mlp``, ``logreg``)."""
    return LOGREG if isinstance(model, LogisticClassifier) else "mlp"


def learner_from_state(state: Mapping[str, Any]) -> Learner:
    """The fitted learner a ``to_state()`` dict describes; a state without ``learner`` is an ``mlp`` head
    (every model saved before learners had names). ValueError on an unknown learner or format."""
    name = state.get("learner", "mlp")
    if name not in _FROM_STATE:
        raise ValueError(f"model state names learner {name!r}, which this HALI does not know "
                         f"({sorted(_FROM_STATE)}); retrain the model")
    return _FROM_STATE[name](state)
