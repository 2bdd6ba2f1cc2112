"""Learners: one interface for the retrain job and the simulation, saved without pickle."""

import io

import numpy as np
import pytest
import torch

from ml_backend.model.head import HeadClassifier
from ml_backend.model.learners import LEARNERS, MC_LEARNERS, learner_from_state, learner_name, make_learner
from ml_backend.model.linear import LogisticClassifier
from ml_backend.model.store import ModelStore


def blobs(seed: int = 0, n_per_class: int = 30, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 6) float32, labels (n,) int64): one well-separated Gaussian blob per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(n_classes, 6))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), 6))).astype(np.float32), y


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_separates_blobs_and_keeps_k_outputs(name):
    x, y = blobs()
    model = make_learner(name, 4, random_state=0).fit(x, y)
    proba = model.predict_proba(x)
    assert proba.shape == (len(x), 4) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (model.predict(x) == y).mean() > 0.95
    assert proba[:, 3].max() < 0.05  # a class with no label gets (almost) no mass
    assert model.transform(x).shape[0] == len(x)
    assert model.classes_seen_.tolist() == [0, 1, 2]


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_state_survives_a_weights_only_load(name):
    x, y = blobs(1)
    model = make_learner(name, 3, random_state=0).fit(x, y)
    again = learner_from_state(roundtrip(model.to_state()))
    assert learner_name(again) == name
    np.testing.assert_allclose(again.predict_proba(x), model.predict_proba(x), atol=1e-6)


def test_logreg_with_two_classes_is_a_sigmoid_over_two_logits():
    x, y = blobs(2, n_classes=2)
    model = LogisticClassifier(2).fit(x, y)
    logits = model.decision_function(x)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1], atol=1e-5)
    assert (model.predict(x) == y).all()


def test_logreg_with_one_class_predicts_it_everywhere():
    x, _ = blobs(3)
    model = LogisticClassifier(3).fit(x, np.full(len(x), 2))
    assert (model.predict(x) == 2).all()


def test_logreg_balances_a_rare_class():
    rng = np.random.default_rng(4)
    x = np.r_[rng.normal(0, 1, (95, 2)), rng.normal(2.5, 1, (5, 2))].astype(np.float32)
    y = np.r_[np.zeros(95, int), np.ones(5, int)]
    balanced = LogisticClassifier(2).fit(x, y).predict(x)
    plain = LogisticClassifier(2, class_weight=None).fit(x, y).predict(x)
    assert balanced[y == 1].mean() > plain[y == 1].mean()


def test_an_old_head_state_without_a_learner_name_loads_as_mlp():
    x, y = blobs(5)
    state = HeadClassifier(3, max_epochs=3).fit(x, y).to_state()
    assert "learner" not in state
    assert isinstance(learner_from_state(roundtrip(state)), HeadClassifier)


def test_an_unknown_learner_is_named_in_the_error():
    with pytest.raises(ValueError, match="'svm'.*logreg.*mlp"):
        make_learner("svm", 2)
    with pytest.raises(ValueError, match="'svm'"):
        learner_from_state({"learner": "svm"})


def test_the_store_saves_and_loads_a_logreg_model(tmp_path):
    x, y = blobs(6)
    model = LogisticClassifier(3).fit(x, y)
    store = ModelStore(tmp_path)
    store.save(1, model, {"metrics": {}})
    loaded, meta = store.load()
    assert isinstance(loaded, LogisticClassifier) and meta["learner"] == "logreg"
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x), atol=1e-6)


def test_only_mlp_gives_mc_passes():
    assert MC_LEARNERS == {n for n in LEARNERS if hasattr(make_learner(n, 2), "predict_proba_mc")}


def test_suggestions_of_a_balanced_logreg_follow_how_common_each_class_is():
    """Overlapping classes, 9:1: the balanced fit calls many common cells rare; its suggestions do not."""
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(0, 1, (900, 2)), rng.normal(1.2, 1, (100, 2))].astype(np.float32)
    y = np.r_[np.zeros(900, int), np.ones(100, int)]
    model = LogisticClassifier(2).fit(x, y)
    right_balanced = (model.predict_proba(x).argmax(1) == y).mean()
    right_suggested = (model.suggest_proba(x).argmax(1) == y).mean()
    assert right_suggested > right_balanced + 0.1
    np.testing.assert_allclose(model.suggest_proba(x).sum(axis=1), 1.0, atol=1e-5)
    again = learner_from_state(roundtrip(model.to_state()))
    np.testing.assert_allclose(again.suggest_proba(x), model.suggest_proba(x), atol=1e-6)
    plain = LogisticClassifier(2, class_weight=None).fit(x, y)
    np.testing.assert_allclose(plain.suggest_proba(x), plain.predict_proba(x))


@pytest.mark.parametrize("name", ["mlp", "logreg"])
def test_the_shown_probabilities_follow_from_the_ranked_ones(name):
    rng = np.random.default_rng(4)
    y = rng.choice(3, size=120, p=[0.7, 0.2, 0.1])
    x = (rng.normal(size=(120, 5)) + y[:, None]).astype(np.float32)
    model = make_learner(name, 3, random_state=0).fit(x, y)
    proba = model.predict_proba(x)
    shown = model.suggest_from_proba(proba)
    np.testing.assert_allclose(shown, model.suggest_proba(x), rtol=1e-5, atol=1e-7)
    assert shown is not proba
