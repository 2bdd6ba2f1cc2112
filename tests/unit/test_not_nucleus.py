""""Not a nucleus" as a first-class answer: read from annotations (hotkey 0 or a deleted box), counted as a
label, learnt and suggested by the model, and left out of the ranking and of exports."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from label_config import (
    LEGACY_NEUTRAL_LABEL,
    NEUTRAL_LABEL,
    NOT_NUCLEUS_LABEL,
    CellBox,
    LabelConfigError,
    LabelSet,
    TileTask,
    cell_to_region,
    is_nucleus,
    nuclei_only,
    read_cell_labels,
)
from ml_backend.labels.records import annotation_record, count_changed, records_from_tasks
from ml_backend.model.head import HeadClassifier
from ml_backend.ordering.ranking import rank_tiles
from ml_backend.ordering.strategies import get_strategy
from ml_backend.retrain.cells import Cells
from ml_backend.retrain.run import _rank_open_tasks, _relevance_params
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.predictions import not_nucleus_mask, tile_prediction
from preprocess.tiles.tasks import task_payload

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("Tumor", "Lymphocyte")
LABELS = LabelSet(CLASSES)
OLD_LABELS = LabelSet(CLASSES, not_nucleus=False, neutral=LEGACY_NEUTRAL_LABEL)


def _tile(n=4):
    cells = tuple(CellBox(f"c{i}", 100 + 10 * i, 200, 8, 8) for i in range(n))
    return TileTask("t1", "s1", "/img.png", 100, 200, 60, 50, 1.0, 0.5, cells)


def _shown(tile, label="Tumor"):
    """The boxes Label Studio showed: every cell, with the model's suggestion ``label``."""
    return [cell_to_region(c, tile, label, 0.7) for c in tile.cells]


def _relabel(region, label):
    return dict(region, value=dict(region["value"], rectanglelabels=[label]), origin="prediction-changed")


# --- reading an annotation ----------------------------------------------------------------------------------


def test_accepted_relabelled_and_not_a_nucleus_boxes_are_all_labels():
    tile = _tile()
    shown = _shown(tile)
    result = [shown[0], _relabel(shown[1], "Lymphocyte"), _relabel(shown[2], NOT_NUCLEUS_LABEL), shown[3]]
    read = read_cell_labels(result, tile, LABELS, from_prediction=True)
    assert read.labels == {"c0": "Tumor", "c1": "Lymphocyte", "c2": NOT_NUCLEUS_LABEL, "c3": "Tumor"}
    assert read.problems == ()


def test_a_deleted_box_means_not_a_nucleus():
    tile = _tile()
    shown = _shown(tile)
    del shown[1]
    read = read_cell_labels(shown, tile, LABELS)  # no parent_prediction, but other boxes of ours are there
    assert read.labels == {"c0": "Tumor", "c1": NOT_NUCLEUS_LABEL, "c2": "Tumor", "c3": "Tumor"}


def test_deleting_every_box_of_a_shown_prediction_marks_every_cell_not_a_nucleus():
    tile = _tile(3)
    read = read_cell_labels([], tile, LABELS, from_prediction=True)
    assert read.labels == dict.fromkeys(["c0", "c1", "c2"], NOT_NUCLEUS_LABEL)


def test_an_annotator_shown_no_boxes_says_nothing_about_the_cells():
    tile = _tile()
    drawn = cell_to_region(CellBox("by-hand", 120, 220, 6, 6), tile, "Lymphocyte")
    read = read_cell_labels([drawn], tile, LABELS, from_prediction=False)
    assert read.labels == {} and read.drawn == (((120, 220, 6, 6), "Lymphocyte", "by-hand"),)


def test_a_box_left_with_no_class_labels_nothing_and_is_not_a_deletion():
    tile = _tile(2)
    result = [cell_to_region(tile.cells[0], tile, NEUTRAL_LABEL), cell_to_region(tile.cells[1], tile, "Tumor")]
    assert read_cell_labels(result, tile, LABELS, from_prediction=True).labels == {"c1": "Tumor"}


def test_a_box_with_a_bad_label_is_a_problem_not_a_deletion():
    tile = _tile(2)
    result = [cell_to_region(tile.cells[0], tile, "Tumour"), cell_to_region(tile.cells[1], tile, "Tumor")]
    read = read_cell_labels(result, tile, LABELS, from_prediction=True)
    assert read.labels == {"c1": "Tumor"} and "Tumour" in read.problems[0]


def test_old_configs_keep_their_neutral_label_and_ignore_deletions():
    tile = _tile(3)
    result = [cell_to_region(tile.cells[0], tile, LEGACY_NEUTRAL_LABEL), cell_to_region(tile.cells[1], tile, "Tumor")]
    read = read_cell_labels(result, tile, OLD_LABELS, from_prediction=True)
    assert read.labels == {"c1": "Tumor"} and read.problems == ()
    not_offered = read_cell_labels([cell_to_region(tile.cells[0], tile, NOT_NUCLEUS_LABEL)], tile, OLD_LABELS)
    assert not_offered.labels == {} and NOT_NUCLEUS_LABEL in not_offered.problems[0]


def test_a_skipped_task_labels_nothing_even_with_boxes_missing():
    tile = _tile()
    rec, problems = annotation_record(7, tile, [], LABELS, cancelled=True, updated_at="t", from_prediction=True)
    assert rec.labels == {} and problems == ()


def test_not_a_nucleus_labels_count_towards_the_next_retrain():
    tile = _tile()
    shown = _shown(tile)
    result = [shown[0], _relabel(shown[1], NOT_NUCLEUS_LABEL)]  # c2, c3 deleted
    rec, _ = annotation_record(7, tile, result, LABELS, cancelled=False, updated_at="t", from_prediction=True)
    assert count_changed({}, rec.labels) == 4
    assert nuclei_only(rec.labels) == {"c0": "Tumor"}


def test_records_from_listed_tasks_use_parent_prediction_to_read_deletions():
    tile = _tile(2)
    tasks = [
        {"id": 1, "annotations": [{"id": 10, "result": [], "parent_prediction": 5, "updated_at": "a"}]},
        {"id": 2, "annotations": [{"id": 11, "result": [], "parent_prediction": None, "updated_at": "b"},
                                  {"id": 12, "result": [], "was_cancelled": True, "parent_prediction": 6}]},
    ]
    records = records_from_tasks(tasks, {1: tile, 2: tile}, LABELS)
    assert records[10].labels == {"c0": NOT_NUCLEUS_LABEL, "c1": NOT_NUCLEUS_LABEL}
    assert records[11].labels == {} and records[12].labels == {}


def test_exports_leave_non_nuclei_out():
    labels = {"a": "Tumor", "b": NOT_NUCLEUS_LABEL, "c": "Lymphocyte"}
    assert nuclei_only(labels) == {"a": "Tumor", "c": "Lymphocyte"}
    assert not is_nucleus(NOT_NUCLEUS_LABEL) and is_nucleus("Tumor")


# --- suggestions ---------------------------------------------------------------------------------------------


def test_the_model_suggests_not_a_nucleus_with_its_probability_as_the_box_score():
    tile = _tile(2)
    proba = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    pred = tile_prediction(tile, proba, LABELS.targets, "hali-v0003", 0.25)
    assert [r["value"]["rectanglelabels"] for r in pred["result"]] == [[NOT_NUCLEUS_LABEL], ["Tumor"]]
    assert [r["score"] for r in pred["result"]] == pytest.approx([0.7, 0.6])
    assert pred["score"] == 0.25 and pred["model_version"] == "hali-v0003"
    assert not_nucleus_mask(proba, LABELS.targets).tolist() == [True, False]
    assert not_nucleus_mask(proba[:, :2], OLD_LABELS.targets).tolist() == [False, False]


def test_without_a_model_every_box_carries_the_configs_own_neutral_label():
    tile = _tile(2)
    for labels in (LABELS, OLD_LABELS):
        pred = tile_prediction(tile, None, labels.targets, "hali-v0000", 0.0, labels.neutral)
        assert {r["value"]["rectanglelabels"][0] for r in pred["result"]} == {labels.neutral}
    imported = task_payload(tile, "hali-v0000", 0.0)["predictions"][0]["result"]
    assert {r["value"]["rectanglelabels"][0] for r in imported} == {NEUTRAL_LABEL}
    old = task_payload(tile, "hali-v0000", 0.0, LEGACY_NEUTRAL_LABEL)["predictions"][0]["result"]
    assert {r["value"]["rectanglelabels"][0] for r in old} == {LEGACY_NEUTRAL_LABEL}


def test_a_model_that_does_not_fit_the_configs_labels_is_a_clear_error():
    with pytest.raises(LabelConfigError, match="3 labels"):
        tile_prediction(_tile(2), np.full((2, 2), 0.5), LABELS.targets, "hali-v0001", 0.0)


# --- ranking -------------------------------------------------------------------------------------------------


def test_picks_on_non_nuclei_count_for_nothing_and_tiles_of_only_non_nuclei_come_last():
    cell_tile = np.array(["a", "a", "b", "b", "c", "d"])
    excluded = np.array([True, True, True, False, False, False])  # tile a: non-nuclei only
    picks = np.array([0, 1, 2, 4])  # a, a, b (excluded cell), c
    assert rank_tiles(cell_tile, picks, ["a", "b", "c", "d"], excluded=excluded) == ["c", "b", "d", "a"]


@given(cell_tile=st.lists(st.integers(0, 6), min_size=1, max_size=40), data=st.data())
def test_exclusion_keeps_every_candidate_exactly_once_and_all_excluded_tiles_last(cell_tile, data):
    n = len(cell_tile)
    excluded = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    picks = np.array(data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n)), dtype=np.int64)
    candidates = data.draw(st.lists(st.integers(0, 8), unique=True))
    ranked = rank_tiles(np.array(cell_tile), picks, candidates, excluded=excluded)
    assert sorted(ranked) == sorted(candidates)
    only_excluded = [all(excluded[i] for i in range(n) if cell_tile[i] == t) and t in cell_tile for t in ranked]
    assert only_excluded == sorted(only_excluded)  # False (some nucleus) ... then True (none)


def test_not_a_nucleus_is_never_the_rare_class(tmp_path):
    settings = BackendSettings(data_dir=tmp_path, strategy="relevance")
    y = np.array([0, 0, 1, 2, -1])  # target 2 = "Not a nucleus", labelled once: fewest, but not a class
    assert _relevance_params(settings, list(CLASSES), y).rare_class == 1


@pytest.mark.parametrize("strategy", ["coreset", "entropy", "relevance"])
def test_the_retrain_ranks_predicted_non_nuclei_last_and_never_picks_them(tmp_path, strategy):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])  # Tumor, Lymphocyte, Not a nucleus
    y_lab = np.repeat([0, 1, 2], 10)
    x_lab = centres[y_lab] + rng.normal(0, 0.3, (30, 2))
    # open task 1: two tumour cells; task 2: debris only (far out, coreset's favourite); task 3: one lymphocyte
    x_open = np.array([[0.2, 0.1], [0.1, -0.2], [0.0, 9.0], [0.3, 8.5], [6.0, 0.4]])
    features = np.vstack([x_lab, x_open]).astype(np.float32)
    cells = Cells(features, np.array([0] * 30 + [1, 1, 2, 2, 3]), np.concatenate([y_lab, -np.ones(5, int)]))
    head = HeadClassifier(n_classes=3, random_state=0).fit(features[:30], y_lab)
    proba = head.predict_proba(features)
    excluded = not_nucleus_mask(proba, LABELS.targets) & (cells.y < 0)
    assert excluded.tolist() == [False] * 32 + [True, True, False]
    settings = BackendSettings(data_dir=tmp_path, strategy=strategy, query_budget=2)
    order = _rank_open_tasks(cells, head, proba, [2, 1, 3], settings, get_strategy(strategy), excluded)
    assert sorted(order) == [1, 2, 3] and order[-1] == 2
