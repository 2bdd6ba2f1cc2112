"""Settings: one shared base, typed choices that match the registries, and bad values stopped at start-up."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from adapters.settings import SharedSettings, describe_validation_error
from ml_backend.cli import main
from ml_backend.model.head import OPTIMIZER_PRESETS
from ml_backend.model.learners import LEARNERS
from ml_backend.model.learners import MC_LEARNERS as REGISTRY_MC_LEARNERS
from ml_backend.ordering.strategies import STRATEGIES, needs_mc_passes
from ml_backend.settings import (
    MC_LEARNERS,
    MC_STRATEGIES,
    BackendSettings,
    LearnerName,
    OptimizerName,
    StrategyName,
)
from preprocess.settings import PreprocessSettings


def test_strategy_and_optimizer_choices_are_the_registries():
    assert set(typing.get_args(StrategyName)) == set(STRATEGIES)
    assert set(typing.get_args(OptimizerName)) == set(OPTIMIZER_PRESETS)
    assert set(typing.get_args(LearnerName)) == set(LEARNERS)
    assert MC_STRATEGIES == {name for name, s in STRATEGIES.items() if needs_mc_passes(s)}
    assert MC_LEARNERS == REGISTRY_MC_LEARNERS


def test_an_mc_strategy_gets_the_mlp_unless_another_learner_is_asked_for(monkeypatch):
    assert BackendSettings().learner == "logreg"
    assert BackendSettings(strategy="relevance").learner == "mlp"
    monkeypatch.setenv("HALI_STRATEGY", "hybrid")
    assert BackendSettings().learner == "mlp"
    monkeypatch.setenv("HALI_LEARNER", "logreg")
    with pytest.raises(ValidationError) as info:
        BackendSettings()
    line = describe_validation_error(info.value)
    assert "HALI_LEARNER='logreg'" in line and "HALI_STRATEGY=hybrid needs MC dropout" in line


def test_shared_fields_mean_the_same_in_both_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("HALI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HALI_REDIS_URL", "redis://127.0.0.1:1/0")
    backend, preprocess = BackendSettings(), PreprocessSettings()
    for name in SharedSettings.model_fields:
        assert getattr(backend, name) == getattr(preprocess, name), name
    assert backend.data_dir == (tmp_path / "data").resolve()


def test_a_misspelt_strategy_fails_when_settings_are_built(monkeypatch):
    monkeypatch.setenv("HALI_STRATEGY", "corset")
    with pytest.raises(ValidationError) as info:
        BackendSettings()
    line = describe_validation_error(info.value)
    assert "HALI_STRATEGY='corset'" in line and "coreset" in line and "\n" not in line


@pytest.mark.parametrize("command", [["worker", "--burst"], ["serve", "--port", "1"]])
def test_the_cli_stops_at_start_up_on_a_bad_choice(monkeypatch, capsys, command):
    monkeypatch.setenv("HALI_OPTIMIZER", "sgd")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hali {command[0]}: error: bad setting HALI_OPTIMIZER='sgd'") and "paper-sgd" in err
