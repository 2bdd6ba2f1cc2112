"""The training loop behind :meth:`ml_backend.model.head.HeadClassifier.fit`.

Mini-batch cross-entropy over shuffled (optionally class-balanced) epochs of at most
:data:`MAX_STEPS_PER_EPOCH` steps, with early stopping on a stratified validation split. Everything
random draws from the caller's ``torch.Generator`` or seed, so a fit is reproducible without touching
the global RNGs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ml_backend.model.net import HeadNet

MIN_LABELS_FOR_VAL = 8
# An epoch takes at most this many optimiser steps: above 16 x batch_size training labels (1,024 at the
# default 64, about 1,365 labels with the 25% validation split) the batch grows instead. A step of this
# tiny head costs about the same at 64 rows as at 256 (per-step overhead, not arithmetic), so a fit on 5,000
# labels is about 1.7x faster, with the same accuracy (docs/benchmarks.md). Below that size nothing changes.
MAX_STEPS_PER_EPOCH = 16


def epoch_batch_size(batch_size: int, n_train: int) -> int:
    """The mini-batch size for ``n_train`` training rows: ``batch_size``, or more so that an epoch has
    at most :data:`MAX_STEPS_PER_EPOCH` steps."""
    return max(batch_size, -(-n_train // MAX_STEPS_PER_EPOCH))


def split_train_val(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 indices ``(train, val)`` into ``labels`` (N,), stratified by class.

    Each class gives ``round(val_fraction * n_c)`` labels to validation, at least one and at most
    ``n_c - 1``, so every class is in both parts. ``val`` is empty when ``val_fraction`` is 0, when
    there are fewer than :data:`MIN_LABELS_FOR_VAL` labels, or when a class has a single label.
    """
    counts = np.bincount(labels)
    present = np.flatnonzero(counts)
    if val_fraction == 0 or len(labels) < MIN_LABELS_FOR_VAL or counts[present].min() < 2:
        return np.arange(len(labels)), np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val_idx = np.sort(np.concatenate([_val_share(np.flatnonzero(labels == c), val_fraction, rng) for c in present]))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def _val_share(idx: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    n_val = min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
    return rng.permutation(idx)[:n_val]


@dataclass(frozen=True)
class TrainingData:
    """Standardised tensors for one fit: ``x_*`` (n, d) float32, ``y_*`` (n,) int64.

    ``val_weight`` (K,) float32 weights the validation cross-entropy: 1 / (count in validation) per
    class when ``balanced``, so each class counts equally, else all ones.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    val_weight: torch.Tensor

    @classmethod
    def from_split(
        cls,
        net: HeadNet,
        x: torch.Tensor,
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        n_classes: int,
        balanced: bool,
    ) -> TrainingData:
        """Gather and standardise (with ``net.standardize``) the rows of ``x`` (N, d) for each part."""
        y = torch.from_numpy(labels)
        with torch.no_grad():
            z_train, z_val = net.standardize(x[train_idx]), net.standardize(x[val_idx])
        counts = torch.bincount(y[val_idx], minlength=n_classes).float()
        weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), 0.0) if balanced else torch.ones(n_classes)
        return cls(z_train, y[train_idx], z_val, y[val_idx], weight)


@dataclass(frozen=True)
class TrainResult:
    """What a training run reports: epochs run, lowest validation loss (None without one), per-epoch losses."""

    n_epochs: int
    best_val_loss: float | None
    history: dict[str, list[float]]


@dataclass
class _EarlyStopping:
    """Tracks the lowest validation loss and the weights that reached it."""

    patience: int
    best_loss: float = float("inf")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    waited: int = 0

    def should_stop(self, loss: float, net: HeadNet) -> bool:
        if loss < self.best_loss:
            self.best_loss, self.waited = loss, 0
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience


def train_head(
    net: HeadNet,
    data: TrainingData,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    batch_size: int,
    n_epochs: int,
    patience: int,
    oversample: bool,
) -> TrainResult:
    """Train ``net`` in place for up to ``n_epochs``; with validation data, stop early and keep the best weights.

    ``batch_size`` is a minimum: see :func:`epoch_batch_size`.
    """
    batch_size = epoch_batch_size(batch_size, len(data.y_train))
    groups = _class_groups(data.y_train) if oversample else None
    stopper = _EarlyStopping(patience) if len(data.y_val) else None
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    for epoch in range(1, n_epochs + 1):
        order = _epoch_order(groups, len(data.y_train), generator)
        train_loss = _train_epoch(net, data.x_train[order], data.y_train[order], optimizer, generator, batch_size)
        if not math.isfinite(train_loss):
            raise ValueError(f"training diverged at epoch {epoch} (loss {train_loss}); use a lower lr")
        history["train_loss"].append(train_loss)
        if stopper is not None:
            history["val_loss"].append(_val_loss(net, data))
            if stopper.should_stop(history["val_loss"][-1], net):
                break
    if stopper is None:
        return TrainResult(epoch, None, history)
    net.load_state_dict(stopper.best_state)
    return TrainResult(epoch, stopper.best_loss, history)


def _train_epoch(
    net: HeadNet,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batch_size: int,
) -> float:
    """One pass over ``x`` (n, d), ``y`` (n,) in order; returns the mean training loss."""
    total = torch.zeros(())
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        loss = F.cross_entropy(net.logits(xb, generator), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(yb)
    return float(total) / len(y)


def _val_loss(net: HeadNet, data: TrainingData) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(net.logits(data.x_val), data.y_val, weight=data.val_weight))


def _class_groups(y: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each class present in ``y`` (n,), one int64 tensor per class."""
    return [torch.nonzero(y == c).flatten() for c in torch.unique(y)]


def _epoch_order(groups: list[torch.Tensor] | None, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices for one epoch: class-balanced when ``groups`` are given, else a permutation of ``n``."""
    if groups is None:
        return torch.randperm(n, generator=generator)
    return _balanced_order(groups, generator)


def _balanced_order(groups: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """One epoch of indices, about as long as the data, with every class equally often.

    Each class gets ``ceil(n / k)`` slots: a minority class repeats its shuffled indices, a majority
    class contributes a fresh random subset each epoch.
    """
    quota = -(-sum(len(g) for g in groups) // len(groups))
    order = torch.cat([_repeat_shuffled(g, quota, generator) for g in groups])
    return order[torch.randperm(len(order), generator=generator)]


def _repeat_shuffled(idx: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` entries of ``idx``: whole shuffled copies back to back, so repeats are spread evenly."""
    n_copies = -(-count // len(idx))
    perms = torch.argsort(torch.rand(n_copies, len(idx), generator=generator), dim=1)
    return idx[perms].flatten()[:count]
