"""The head's training loop: an epoch has at most MAX_STEPS_PER_EPOCH steps; below that nothing changes."""

import math

import numpy as np
import pytest
import torch

from ml_backend.model import training as head_training
from ml_backend.model.head import HeadClassifier
from ml_backend.model.training import MAX_STEPS_PER_EPOCH, epoch_batch_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n: int, seed: int, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, d) float32, y (n,) int): three overlapping gaussian classes, 60/30/10."""
    centres = np.random.default_rng(99).normal(size=(3, d)) * 2.5 / np.sqrt(d)
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("batch_size", [1, 64, 100])
def test_epoch_batch_size_keeps_the_batch_until_an_epoch_would_exceed_the_step_cap(batch_size):
    for n_train in range(1, 20_000, 37):
        batch = epoch_batch_size(batch_size, n_train)
        assert math.ceil(n_train / batch) <= MAX_STEPS_PER_EPOCH
        if n_train <= batch_size * MAX_STEPS_PER_EPOCH:
            assert batch == batch_size
        else:  # the smallest batch that respects the cap
            assert math.ceil(n_train / (batch - 1)) > MAX_STEPS_PER_EPOCH


def test_fits_below_the_step_cap_are_exactly_what_they_were_without_it(monkeypatch):
    X, y = blobs(1300, seed=0)  # 975 training rows: 16 steps of 64
    capped = HeadClassifier(3, max_epochs=15).fit(X, y)
    monkeypatch.setattr(head_training, "MAX_STEPS_PER_EPOCH", 10**9)
    uncapped = HeadClassifier(3, max_epochs=15).fit(X, y)
    for name, value in capped.net_.state_dict().items():
        assert torch.equal(value, uncapped.net_.state_dict()[name]), name


def test_larger_batches_on_many_labels_keep_the_accuracy_of_batches_of_64(monkeypatch):
    X, y = blobs(4000, seed=1)
    X_test, y_test = blobs(4000, seed=2)
    capped = HeadClassifier(3).fit(X, y).score(X_test, y_test)
    monkeypatch.setattr(head_training, "MAX_STEPS_PER_EPOCH", 10**9)
    batches_of_64 = HeadClassifier(3).fit(X, y).score(X_test, y_test)
    assert capped > 0.8
    assert capped >= batches_of_64 - 0.02
