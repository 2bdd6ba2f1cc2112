"""The retrain job's strategy settings: HALI_RELEVANCE_* become the relevance strategies' parameters."""

import numpy as np
import pytest

from ml_backend.retrain.run import _relevance_params
from ml_backend.settings import BackendSettings

CLASSES = ["tumour", "TIL", "other"]


def test_rare_class_defaults_to_the_least_labelled_one(tmp_path):
    settings = BackendSettings(data_dir=tmp_path, strategy="relevance", relevance_gamma=5.0)
    params = _relevance_params(settings, CLASSES, np.array([-1, 0, 0, 2, 2, 1, -1, 0, 2]))  # -1: unlabelled
    assert params.rare_class == 1 and params.gamma == 5.0 and params.class_certainty_max == 0.8


def test_a_named_rare_class_wins_and_an_unknown_name_is_a_clear_error(tmp_path):
    settings = BackendSettings(data_dir=tmp_path, strategy="hybrid", relevance_rare_class="other")
    assert _relevance_params(settings, CLASSES, np.array([2, 2, 2])).rare_class == 2
    wrong = BackendSettings(data_dir=tmp_path, strategy="hybrid", relevance_rare_class="lymphocyte")
    with pytest.raises(ValueError, match=r"HALI_RELEVANCE_RARE_CLASS='lymphocyte'.*tumour"):
        _relevance_params(wrong, CLASSES, np.array([0]))


def test_settings_reject_a_dropout_that_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="mc_dropout"):
        BackendSettings(data_dir=tmp_path, mc_dropout=1.0)
