"""Consensus, per-cell lineage and agreement from the label mirror's records (pure)."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from label_config import NOT_NUCLEUS_LABEL
from ml_backend.labels.agreement import agreement_report, fleiss_kappa, pairwise_cohen, ratings
from ml_backend.labels.lineage import action_counts, action_of, cell_consensus, cell_labels
from ml_backend.labels.records import AnnotationRecord, consensus, consensus_labels, count_conflicts

# Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa = 0.210.
FLEISS_EXAMPLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def _rec(task, labels, user, at, **kw):
    return AnnotationRecord(task, labels, updated_at=at, completed_by=user, **kw)


def test_consensus_is_the_majority_and_a_tie_goes_to_the_latest_save():
    assert consensus([("A", "t1"), ("A", "t2"), ("B", "t3")]) == "A"
    assert consensus([("B", "t3"), ("A", "t1")]) == "B"
    records = {1: _rec(9, {"c1": "A", "c2": "A"}, 1, "t1"), 2: _rec(9, {"c1": "A", "c2": "B"}, 2, "t2"),
               3: _rec(9, {"c1": "B"}, 3, "t3")}
    assert consensus_labels(records) == {"c1": "A", "c2": "B"}
    assert count_conflicts(records) == 2


def test_cell_consensus_gives_agreement_share_and_conflict():
    records = {1: _rec(9, {"c1": "A"}, 1, "t1"), 2: _rec(9, {"c1": "A"}, 2, "t2"), 3: _rec(9, {"c1": "B"}, 3, "t3")}
    (row,) = cell_consensus(records)
    assert (row.label, row.n_annotators, row.conflict) == ("A", 3, True)
    assert row.agreement == pytest.approx(2 / 3)


def test_actions_say_what_the_annotator_did_with_the_suggestion():
    assert action_of("A", "A") == "kept"
    assert action_of("B", "A") == "changed"
    assert action_of(NOT_NUCLEUS_LABEL, "A") == "rejected"
    assert action_of("A", None) == "labelled"
    assert action_of("A", None, origin="prediction") == "kept"
    rec = _rec(9, {"c1": "A", "c2": "B", "c3": NOT_NUCLEUS_LABEL, "c4": "A"}, 5, "t1", lead_time=10.0,
               model_version="hali-v0003", suggested={"c1": ["A", 0.9], "c2": ["A", 0.6], "c3": ["B", 0.5],
                                                      "c4": ["No class yet", None]},
               drawn=[{"box": [1, 2, 3, 4], "label": "B", "region_id": "x1"}])
    rows = cell_labels({7: rec})
    assert [(r.cell_id, r.action) for r in rows] == [("c1", "kept"), ("c2", "changed"), ("c3", "rejected"),
                                                     ("c4", "labelled"), ("x1", "drawn")]
    assert rows[0].probability == 0.9 and rows[0].model_version == "hali-v0003" and rows[0].annotator == 5
    assert rows[0].seconds == pytest.approx(2.0)  # 10 s over 5 labelled cells
    assert action_counts(rows) == {"kept": 1, "changed": 1, "rejected": 1, "labelled": 1, "drawn": 1}


def test_fleiss_kappa_matches_the_published_example():
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.210, abs=0.001)


def test_fleiss_kappa_is_one_for_perfect_agreement_and_undefined_for_one_label():
    assert fleiss_kappa(np.array([[2, 0], [0, 2], [2, 0]])) == pytest.approx(1.0)
    assert fleiss_kappa(np.array([[2, 0], [2, 0]])) is None


def test_pairwise_cohen_matches_sklearn_on_the_cells_both_labelled():
    a = {f"c{i}": lab for i, lab in enumerate("AABBA")}
    b = {f"c{i}": lab for i, lab in enumerate("ABBBA")}
    records = {1: _rec(1, a, 1, "t1"), 2: _rec(1, b, 2, "t2"), 3: _rec(2, {"z": "A"}, 3, "t3")}
    table = ratings(records)
    assert set(table) == set(a)  # "z" was read once
    (pair,) = pairwise_cohen(table)
    assert (pair["a"], pair["b"], pair["cells"]) == (1, 2, 5)
    assert pair["kappa"] == pytest.approx(cohen_kappa_score(list("AABBA"), list("ABBBA")))
    report = agreement_report(records, ["A", "B"])
    assert report["cells"] == 5 and set(report["fleiss_kappa_per_class"]) == {"A", "B"}
    assert report["fleiss_kappa"] is not None


def test_label_summary_and_lineage_csv(tmp_path):
    from ml_backend.labels.cli import format_summary, label_summary, write_lineage_csv

    records = {1: _rec(9, {"c1": "A", "c2": "B"}, 1, "t1", suggested={"c1": ["A", 0.8]}),
               2: _rec(9, {"c1": "B", "c2": "B"}, 2, "t2")}
    rows = cell_labels(records)
    summary = label_summary(3, records, rows, ["A", "B"])
    assert (summary["annotations"], summary["annotators"], summary["labelled_cells"], summary["conflicts"]) == (2, 2, 2, 1)
    assert summary["actions"]["kept"] == 1 and "Fleiss' kappa" in format_summary(summary)
    write_lineage_csv(tmp_path / "l.csv", rows, records)
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert lines[0].endswith("consensus,agreement,conflict") and len(lines) == 5
