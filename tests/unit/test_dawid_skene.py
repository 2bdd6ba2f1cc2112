"""Dawid-Skene consensus: agrees with a clear majority, and outvotes annotators who carry no information."""

import numpy as np
import pytest
from pydantic import ValidationError

from ml_backend.labels.dawid_skene import dawid_skene
from ml_backend.labels.records import AnnotationRecord, consensus_labels
from ml_backend.settings import BackendSettings

CLASSES = ("epithelial", "inflammatory", "spindle")


def _crowd(n_cells: int, seed: int = 0) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Two careful annotators (95% right) and three who answer "epithelial" nine times in ten, whatever the cell."""
    rng = np.random.default_rng(seed)
    truth = {f"c{i}": CLASSES[rng.integers(3)] for i in range(n_cells)}
    votes: dict[str, dict[str, str]] = {}
    for cell, true in truth.items():
        votes[cell] = {}
        for a in ("careful-1", "careful-2"):
            votes[cell][a] = true if rng.random() < 0.95 else CLASSES[rng.integers(3)]
        for a in ("hasty-1", "hasty-2", "hasty-3"):
            votes[cell][a] = "epithelial" if rng.random() < 0.9 else CLASSES[rng.integers(3)]
    return truth, votes


def _majority(votes: dict[str, str]) -> str:
    labels = list(votes.values())
    return max(sorted(set(labels)), key=labels.count)


def test_unanimous_cells_keep_their_label_with_a_high_posterior():
    votes = {"c1": {"a": "spindle", "b": "spindle"}, "c2": {"a": "epithelial", "b": "epithelial"},
             "c3": {"a": "inflammatory"}}
    out = dawid_skene(votes)
    assert {c: label for c, (label, _) in out.items()} == {"c1": "spindle", "c2": "epithelial", "c3": "inflammatory"}
    assert out["c1"][1] > 0.9 and out["c2"][1] > 0.9


def test_it_outvotes_annotators_whose_answers_do_not_depend_on_the_cell():
    truth, votes = _crowd(400)
    ds = dawid_skene(votes)
    ds_right = np.mean([ds[c][0] == t for c, t in truth.items()])
    majority_right = np.mean([_majority(votes[c]) == t for c, t in truth.items()])
    assert majority_right < 0.6  # three hasty "epithelial" votes outnumber two careful ones
    assert ds_right > 0.9


def test_no_votes_give_no_labels_and_cells_without_votes_are_left_out():
    assert dawid_skene({}) == {}
    assert set(dawid_skene({"c1": {"a": "spindle"}, "c2": {}})) == {"c1"}


def test_consensus_rule_is_chosen_by_name_and_an_unknown_one_is_named_in_the_error():
    truth, votes = _crowd(200, seed=1)
    users = {"careful-1": 1, "careful-2": 2, "hasty-1": 3, "hasty-2": 4, "hasty-3": 5}
    records = {}
    for n, (user, uid) in enumerate(users.items()):  # one annotation per annotator, labelling every cell
        records[n] = AnnotationRecord(task_id=1, labels={c: v[user] for c, v in votes.items()},
                                      updated_at=f"2026-12-01T00:00:0{n}", completed_by=uid)
    majority = consensus_labels(records)
    ds = consensus_labels(records, "dawid-skene")
    assert set(majority) == set(ds) == set(truth)
    assert sum(ds[c] == t for c, t in truth.items()) > sum(majority[c] == t for c, t in truth.items()) + 40
    with pytest.raises(ValueError, match="majority, dawid-skene"):
        consensus_labels(records, "vote")


def test_the_setting_accepts_the_two_rules_only(monkeypatch):
    monkeypatch.setenv("HALI_CONSENSUS", "dawid-skene")
    assert BackendSettings().consensus == "dawid-skene"
    monkeypatch.setenv("HALI_CONSENSUS", "unanimity")
    with pytest.raises(ValidationError, match="consensus"):
        BackendSettings()
