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


def test_exploit_share_serves_the_open_task_of_the_most_confident_suggestions_first(tmp_path):
    from ml_backend.retrain.cells import Cells
    from ml_backend.retrain.run import _exploit

    task_ids = np.array([1, 1, 2, 2, 3, 3, 4])  # task 4 is labelled (not open): never moved
    cells = Cells(np.zeros((7, 2), np.float32), task_ids, np.full(7, -1), np.arange(7))
    shown = np.array([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.7, 0.3], [1.0, 0.0]])
    order = [1, 3, 2]  # the strategy's order
    on = BackendSettings(data_dir=tmp_path, exploit_share=1.0, exploit_top=0)
    assert _exploit(order, cells, shown, [1, 2, 3], on, n_served=4) == [2, 1, 3]
    window = BackendSettings(data_dir=tmp_path, exploit_share=1.0, exploit_top=2)  # among the first 2 only
    assert _exploit(order, cells, shown, [1, 2, 3], window, n_served=4) == [3, 1, 2]
    off = BackendSettings(data_dir=tmp_path, exploit_share=0.0)
    assert _exploit(order, cells, shown, [1, 2, 3], off, n_served=4) == order


def test_exploit_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="exploit_share"):
        BackendSettings(data_dir=tmp_path, exploit_share=1.5)
    with pytest.raises(ValueError, match="exploit_top"):
        BackendSettings(data_dir=tmp_path, exploit_top=-1)
