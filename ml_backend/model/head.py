"""The classifier head: frozen-backbone cell embeddings -> class probabilities.

HALI (van der Wal et al. 2021) trains a small fully connected head on the embeddings of a frozen
ResNet-18::

    x (d) -> FC(d, 32) -> ReLU -> FC(32, 32) -> ReLU -> FC(32, K) -> logits (K)
                                              ^ penultimate features (32), used by Coreset

:class:`HeadClassifier` wraps that network as a scikit-learn estimator. Training is plain mini-batch
cross-entropy with early stopping on a held-out, stratified validation split; see
:meth:`HeadClassifier.fit` for what happens when there are too few labels to hold any out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from ml_backend.model.net import HeadNet
from ml_backend.model.training import TrainingData, split_train_val, train_head
from ml_backend.model.validation import check_labels

STATE_FORMAT = 1
_PREDICT_CHUNK_ROWS = 4_096  # 8 MiB of 512-d rows: 2-3x faster than 65,536 (temporaries stay in cache)


@dataclass(frozen=True)
class OptimizerPreset:
    """A named optimizer recipe: a ``torch.optim`` class and its keyword arguments (``lr`` included)."""

    factory: Callable[..., torch.optim.Optimizer]
    kwargs: Mapping[str, float | bool]


# Add a recipe here and it becomes a valid ``HeadClassifier(optimizer=...)``. ``fused=True`` runs the
# update as one kernel: on this tiny network it cuts a step's time by about a third on CPU.
OPTIMIZER_PRESETS: dict[str, OptimizerPreset] = {
    # Our default: converges in tens of epochs on a few hundred labels.
    "adam": OptimizerPreset(torch.optim.Adam, {"lr": 1e-3, "weight_decay": 1e-4, "fused": True}),
    # The paper's recipe. At this learning rate the loss barely moves on a few hundred labels
    # within 100 epochs (figure in tests/unit/test_head.py); kept for comparison with the paper.
    "paper-sgd": OptimizerPreset(torch.optim.SGD, {"lr": 1e-5, "momentum": 0.9, "fused": True}),
}


class HeadClassifier(ClassifierMixin, BaseEstimator):
    """The HALI classifier head as a scikit-learn estimator.

    Parameters
    ----------
    n_classes: K, the number of outputs. Fixed: a class absent from ``y`` still gets a logit.
    optimizer: a key of :data:`OPTIMIZER_PRESETS`.
    lr: learning rate overriding the preset's; None keeps the preset's.
    max_epochs: upper bound on epochs when early stopping on the validation loss.
    patience: stop after this many epochs without a lower validation loss; the best weights are kept.
    val_fraction: share of labels held out for early stopping, stratified by class.
    epochs_without_val: epochs to train when there is no validation split (see :meth:`fit`).
    batch_size: mini-batch size.
    oversample: draw each epoch so that every class in ``y`` is equally frequent (minority labels
        repeat); the validation loss is then class-balanced too.
    standardize: learn per-feature mean and std on the training split; stored in the state.
    dropout: dropout rate after each hidden ReLU during training and in :meth:`predict_proba_mc`
        (0 disables it; the backend uses 0.25 for the MC-dropout strategies, see ``mc_dropout``).
    random_state: int seed for the split, the initial weights, the batch order and dropout.

    Attributes after ``fit``: ``net_`` (:class:`HeadNet`), ``n_features_in_``, ``classes_``
    (``arange(n_classes)``), ``classes_seen_`` (sorted labels present in ``y``), ``n_epochs_``,
    ``best_val_loss_`` (None without validation), ``history_`` (``{"train_loss": [...],
    "val_loss": [...]}`` per epoch; ``val_loss`` empty without validation).
    """

    def __init__(
        self,
        n_classes: int,
        optimizer: str = "adam",
        lr: float | None = None,
        max_epochs: int = 100,
        patience: int = 10,
        val_fraction: float = 0.25,
        epochs_without_val: int = 30,
        batch_size: int = 64,
        oversample: bool = True,
        standardize: bool = True,
        dropout: float = 0.0,
        random_state: int = 0,
    ) -> None:
        self.n_classes = n_classes
        self.optimizer = optimizer
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.epochs_without_val = epochs_without_val
        self.batch_size = batch_size
        self.oversample = oversample
        self.standardize = standardize
        self.dropout = dropout
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> HeadClassifier:
        """Train on features ``X`` (N, d) float32 and labels ``y`` (N,) int in [0, n_classes).

        A validation split (``val_fraction`` of each class) drives early stopping. With fewer than
        8 labels, a class that has a single label, or ``val_fraction == 0``, nothing can be held out
        without leaving a class unseen or an unreliable loss, so the head trains on all labels for
        ``epochs_without_val`` epochs instead and ``best_val_loss_`` is None.
        """
        self._check_params()
        x, labels = _check_xy(X, y, self.n_classes)
        generator = torch.Generator().manual_seed(self.random_state)
        train_idx, val_idx = split_train_val(labels, self.val_fraction, self.random_state)
        net = HeadNet(x.shape[1], self.n_classes, self.dropout)
        net.reset_parameters(generator)
        if self.standardize:
            _fit_scaler(net, x[train_idx])
        result = train_head(
            net,
            TrainingData.from_split(net, x, labels, train_idx, val_idx, self.n_classes, self.oversample),
            self._make_optimizer(net),
            generator,
            batch_size=self.batch_size,
            n_epochs=self.max_epochs if len(val_idx) else self.epochs_without_val,
            patience=self.patience,
            oversample=self.oversample,
        )
        self._set_fitted(net, labels, result.n_epochs, result.best_val_loss, result.history)
        return self

    def suggest_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities for the suggestions a pathologist sees: :meth:`predict_proba` (the head is unweighted)."""
        return self.predict_proba(X)

    def suggest_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """:meth:`suggest_proba` from :meth:`predict_proba`'s answer (N, K): a copy of it."""
        return np.array(proba, dtype=np.float32)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) float32 for features ``X`` (N, d)."""
        return self._apply(X, lambda net, x: torch.softmax(net(x), dim=1))

    def predict_proba_mc(self, X: np.ndarray, n_passes: int, random_state: int = 0) -> np.ndarray:
        """Class probabilities of ``n_passes`` stochastic forward passes (MC dropout): (T, N, K) float32.

        Dropout (rate ``dropout``, the training rate) stays on after each hidden ReLU, drawn from a
        generator seeded by ``random_state``, so the passes are reproducible. A head trained with
        ``dropout=0`` gives T identical copies of :meth:`predict_proba`.
        """
        if int(n_passes) < 1:
            raise ValueError(f"n_passes={n_passes!r} must be a positive integer")
        generator = torch.Generator().manual_seed(random_state)

        def one_pass(net: HeadNet, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(net.logits(net.standardize(x), generator), dim=1)

        return np.stack([self._apply(X, one_pass) for _ in range(int(n_passes))])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class (N,) int64 for features ``X`` (N, d)."""
        return self.predict_proba(X).argmax(axis=1)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Penultimate features (N, 32) float32 (output of the second ReLU) for ``X`` (N, d)."""
        return self._apply(X, lambda net, x: net.hidden(net.standardize(x)))

    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted head, as tensors and JSON-able values.

        The result can be written with ``torch.save`` and read back with
        ``torch.load(..., weights_only=True)``; :meth:`from_state` rebuilds the estimator.
        """
        self._check_fitted()
        return {
            "format": STATE_FORMAT,
            "params": self.get_params(),
            "n_features": int(self.n_features_in_),
            "classes_seen": [int(c) for c in self.classes_seen_],
            "n_epochs": int(self.n_epochs_),
            "best_val_loss": self.best_val_loss_,
            "history": self.history_,
            "state_dict": {k: v.detach().clone() for k, v in self.net_.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HeadClassifier:
        """Rebuild a fitted head from :meth:`to_state`'s dict. Raises ValueError on a foreign format."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"head state has format {state.get('format')!r}, expected {STATE_FORMAT}; "
                "it was written by another version of HALI, retrain the model"
            )
        head = cls(**state["params"])
        net = HeadNet(state["n_features"], head.n_classes, head.dropout)
        net.load_state_dict(state["state_dict"])
        labels = np.asarray(state["classes_seen"], dtype=np.int64)
        head._set_fitted(net, labels, state["n_epochs"], state["best_val_loss"], state["history"])
        return head

    def _set_fitted(
        self, net: HeadNet, labels: np.ndarray, n_epochs: int, best_val_loss: float | None, history: dict
    ) -> None:
        self.net_ = net.eval()
        self.n_features_in_ = net.fc1.in_features
        self.classes_ = np.arange(self.n_classes)
        self.classes_seen_ = np.unique(labels)
        self.n_epochs_ = int(n_epochs)
        self.best_val_loss_ = None if best_val_loss is None else float(best_val_loss)
        self.history_ = {k: [float(v) for v in vs] for k, vs in history.items()}

    def _apply(self, X: np.ndarray, fn: Callable[[HeadNet, torch.Tensor], torch.Tensor]) -> np.ndarray:
        """Run ``fn(net, rows)`` over ``X`` in chunks; returns the concatenated float32 array."""
        self._check_fitted()
        x = _as_features(X, self.n_features_in_)
        starts = range(0, max(len(x), 1), _PREDICT_CHUNK_ROWS)  # one empty chunk when N == 0
        with torch.inference_mode():
            out = torch.cat([fn(self.net_, x[i : i + _PREDICT_CHUNK_ROWS]) for i in starts])
        if not torch.isfinite(out).all():  # cheaper than checking the (N, d) input
            raise ValueError("features contain NaN or infinite values; check the embeddings")
        return out.numpy()

    def _make_optimizer(self, net: HeadNet) -> torch.optim.Optimizer:
        preset = OPTIMIZER_PRESETS[self.optimizer]
        kwargs = dict(preset.kwargs)
        if self.lr is not None:
            kwargs["lr"] = self.lr
        return preset.factory(net.parameters(), **kwargs)

    def _check_params(self) -> None:
        if self.optimizer not in OPTIMIZER_PRESETS:
            raise ValueError(f"optimizer={self.optimizer!r} is not a preset; use one of {sorted(OPTIMIZER_PRESETS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction!r} must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        for name in ("n_classes", "max_epochs", "patience", "epochs_without_val", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError("this HeadClassifier is not fitted yet; call fit(X, y) or from_state() first")


def _fit_scaler(net: HeadNet, x_train: torch.Tensor) -> None:
    """Store the per-feature mean and std of ``x_train`` (n, d); constant features keep scale 1."""
    std, mean = torch.std_mean(x_train, dim=0, correction=0)
    net.mean.copy_(mean)
    net.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))


def _as_features(X: np.ndarray, n_features: int | None = None) -> torch.Tensor:
    """``X`` as a float32 (N, d) tensor sharing memory when it can; ValueError on a wrong shape."""
    x = np.ascontiguousarray(X, dtype=np.float32)
    if x.ndim != 2 or (n_features is not None and x.shape[1] != n_features):
        expected = f"(N, {n_features})" if n_features is not None else "(N, d)"
        raise ValueError(f"features have shape {x.shape}, expected {expected}")
    with warnings.catch_warnings():
        # A read-only array (np.load with mmap_mode="r") is fine: the head never writes to its input.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def _check_xy(X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """Validated (features (N, d) float32 tensor, labels (N,) int64 array)."""
    x = _as_features(X)
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values; check the embeddings")
    return x, check_labels(y, len(x), n_classes)
