"""Spatial context in the product (ml_backend/suggestions/context.py, HALI_CONTEXT): context features over every cell of a
slide, the neighbour graph cached once per slide, and shown probabilities smoothed over spatial neighbours, the
same in the retrain and in ``/predict``."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.storage import LocalStorage
from label_config import CellBox, TileTask, build_label_config, parse_label_set
from ml_backend.model.context import (
    context_features,
    context_of_rows,
    local_density,
    smooth_proba,
    smooth_rows,
    spatial_neighbours,
)
from ml_backend.model.linear import LogisticClassifier
from ml_backend.model.store import ModelStore
from ml_backend.suggestions import context as context_module
from ml_backend.suggestions.context import CellFeatures, ContextSpec, context_key
from ml_backend.suggestions.embeddings import EmbeddingIndex
from ml_backend.suggestions.predictor import Predictor
from preprocess.layout import DataLayout, write_cell_table
from preprocess.tiles.cells import CellTable

SLIDE = "s1"
DEFAULT_SPEC = ContextSpec()


def _grid_table(rng: np.random.Generator, n_side: int = 12, spacing_px: int = 40) -> CellTable:
    """A grid of cells whose left half is class 0 and right half class 1 (feature 0 says which, noisily)."""
    xs, ys = np.meshgrid(np.arange(n_side) * spacing_px, np.arange(n_side) * spacing_px)
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
    y = (xy[:, 0] >= n_side * spacing_px / 2).astype(int)
    features = np.stack([y + rng.normal(0, 0.8, len(y)), rng.normal(0, 1, len(y))], axis=1).astype(np.float32)
    boxes = np.concatenate([xy - 5, np.full((len(y), 2), 10)], axis=1)
    return CellTable(np.array([f"c{i}" for i in range(len(y))]), boxes, np.array(["t"] * len(y)), features)


def _tile(table: CellTable, rows: np.ndarray, mpp: float | None = 0.25) -> TileTask:
    cells = tuple(CellBox(str(table.cell_ids[r]), *map(int, table.boxes[r])) for r in rows)
    return TileTask("t", SLIDE, "/data/x.png", 0, 0, 512, 512, 1.0, mpp, cells)


def _features(tmp_path, table: CellTable, spec: ContextSpec | None = DEFAULT_SPEC) -> CellFeatures:
    storage = LocalStorage(tmp_path)
    write_cell_table(storage, SLIDE, table)
    return CellFeatures(EmbeddingIndex(storage), storage, spec)


def test_a_cell_surrounded_by_class_a_is_pulled_toward_a():
    # cell 0 in the middle, 8 neighbours on a ring: the model calls cell 0 "B" (0.4 A), its neighbours "A" (0.9)
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    xy = np.vstack([[0.0, 0.0], np.stack([np.cos(angles), np.sin(angles)], axis=1) * 10])
    proba = np.array([[0.4, 0.6]] + [[0.9, 0.1]] * 8, dtype=np.float32)
    nbrs = spatial_neighbours(xy, k=8)

    smoothed = smooth_rows(lambda idx: proba[idx], nbrs, np.array([0]), alpha=0.5)

    assert smoothed[0, 0] > 0.6 and smoothed[0].argmax() == 0  # 0.5 * 0.4 + 0.5 * 0.9 = 0.65
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0, rtol=1e-6)


def test_rows_of_a_slide_get_what_the_whole_slide_computation_gives():
    rng = np.random.default_rng(0)
    xy, x = rng.uniform(0, 500, (60, 2)), rng.normal(0, 1, (60, 3)).astype(np.float32)
    nbrs, density = spatial_neighbours(xy), local_density(xy, 0.25)
    rows = np.array([5, 3, 40, 3])
    full = context_features(x, nbrs, density)
    np.testing.assert_allclose(context_of_rows(x, nbrs, density, rows), full[rows], rtol=1e-6)
    proba = rng.dirichlet([1, 1, 1], 60).astype(np.float32)
    np.testing.assert_allclose(smooth_rows(lambda idx: proba[idx], nbrs, rows, 0.3),
                               smooth_proba(proba, nbrs, 0.3)[rows], rtol=1e-5)


def test_context_features_cover_neighbours_outside_the_asked_cells(tmp_path):
    table = _grid_table(np.random.default_rng(1))
    features = _features(tmp_path, table)
    rows = np.array([0, 1])  # a corner: its neighbours are cells no one asked for
    x = features.features(SLIDE, rows)
    graph = features.graph(SLIDE)
    assert x.shape == (2, 2 * table.features.shape[1] + 1)
    np.testing.assert_allclose(x[0, 2:4], table.features[graph.neighbours[0]].mean(axis=0), rtol=1e-5)
    assert set(graph.neighbours[0].tolist()) - set(rows.tolist())


def test_the_neighbour_graph_is_cached_per_slide_and_reused(tmp_path, monkeypatch):
    table = _grid_table(np.random.default_rng(2))
    first = _features(tmp_path, table).graph(SLIDE)
    assert (tmp_path / context_key(SLIDE, ContextSpec())).is_file()

    def no_kd_tree(*args, **kwargs):
        raise AssertionError("the neighbour graph was computed again")

    monkeypatch.setattr(context_module, "spatial_neighbours", no_kd_tree)
    storage = LocalStorage(tmp_path)
    again = CellFeatures(EmbeddingIndex(storage), storage, ContextSpec()).graph(SLIDE)  # a new process, say
    np.testing.assert_array_equal(again.neighbours, first.neighbours)
    np.testing.assert_allclose(again.density, first.density)


def test_a_re_preprocessed_slide_with_other_boxes_gets_a_new_graph(tmp_path):
    table = _grid_table(np.random.default_rng(3))
    _features(tmp_path, table).graph(SLIDE)
    moved = CellTable(table.cell_ids, table.boxes * 2, table.tile_ids, table.features)  # cells twice as far apart
    graph = _features(tmp_path, moved).graph(SLIDE)
    assert graph.density.sum() < local_density(table.boxes[:, :2].astype(float), 0.25).sum()


def test_without_context_the_features_and_probabilities_are_the_tables(tmp_path):
    table = _grid_table(np.random.default_rng(4))
    features = _features(tmp_path, table, spec=None)
    head = LogisticClassifier(2).fit(table.features, (table.features[:, 0] > 0.5).astype(int))
    rows = np.arange(10)
    np.testing.assert_array_equal(features.features(SLIDE, rows), table.features[rows])
    np.testing.assert_allclose(features.proba(head, SLIDE, rows, True), head.suggest_proba(table.features[rows]))
    assert not (tmp_path / context_key(SLIDE, ContextSpec())).exists()


def test_predict_shows_what_the_retrain_computes_for_a_tile(tmp_path):
    rng = np.random.default_rng(5)
    table = _grid_table(rng)
    features = _features(tmp_path, table)
    y = (table.boxes[:, 0] >= 240).astype(int)
    labelled = rng.choice(len(y), 40, replace=False)
    config = build_label_config(["A", "B"])
    targets = list(parse_label_set(config).targets)  # A, B and "Not a nucleus"
    head = LogisticClassifier(len(targets)).fit(features.features(SLIDE, labelled), y[labelled])
    ModelStore(tmp_path / "projects" / "7").save(1, head, {"classes": ["A", "B"], "context": ContextSpec().to_meta()})
    tile = _tile(table, np.arange(30, 50))
    retrain_view = features.proba(head, SLIDE, features.rows(tile), suggest=True)

    predictor = Predictor(DataLayout(tmp_path, tmp_path / "files"), LocalStorage(tmp_path))
    answer = predictor.predict(7, [{"data": tile.to_task_data()}], config)[0]

    shown = {r["id"]: (r["value"]["rectanglelabels"][0], r["score"]) for r in answer["result"]}
    for cell, p in zip(tile.cells, retrain_view):
        label, score = shown[cell.cell_id]
        assert label == targets[int(p.argmax())]
        assert score == pytest.approx(float(p.max()), rel=1e-5)


def test_smoothing_makes_more_suggestions_right_on_a_two_region_slide(tmp_path):
    rng = np.random.default_rng(6)
    table = _grid_table(rng, n_side=20)
    y = (table.boxes[:, 0] >= 400).astype(int)
    labelled = rng.choice(len(y), 30, replace=False)
    plain, ctx = _features(tmp_path, table, None), _features(tmp_path, table)
    rows = np.arange(len(y))
    right = {}
    for name, f in (("plain", plain), ("context", ctx)):
        head = LogisticClassifier(2).fit(f.features(SLIDE, labelled), y[labelled])
        right[name] = np.mean(f.proba(head, SLIDE, rows, True).argmax(axis=1) == y)
    assert right["context"] > right["plain"] + 0.05


def test_settings_turn_context_off_and_the_spec_round_trips_through_the_sidecar():
    from ml_backend.settings import BackendSettings

    assert ContextSpec.from_settings(BackendSettings()) == ContextSpec(features=False)  # smoothing only (docs/replay.md)
    assert ContextSpec.from_settings(BackendSettings(smooth_alpha=1.0)) is None
    spec = ContextSpec.from_settings(BackendSettings(context=True, smooth_alpha=0.7, context_neighbours=6))
    assert spec == ContextSpec(6, 25.0, 0.7)
    assert ContextSpec.from_meta({"context": spec.to_meta()}) == spec
    assert ContextSpec.from_meta({}) is None  # a model saved before context existed



def test_smoothing_only_keeps_the_tables_features_and_smooths_what_is_shown(tmp_path):
    table = _grid_table(np.random.default_rng(7))
    spec = ContextSpec(features=False)
    features = _features(tmp_path, table, spec)
    head = LogisticClassifier(2).fit(table.features, (table.boxes[:, 0] >= 240).astype(int))
    rows = np.arange(len(table))
    np.testing.assert_array_equal(features.features(SLIDE, rows), table.features)
    expected = smooth_proba(head.suggest_proba(table.features), features.graph(SLIDE).neighbours, spec.smooth_alpha)
    np.testing.assert_allclose(features.proba(head, SLIDE, rows[:7], True), expected[:7], rtol=1e-5)


@pytest.mark.parametrize("spec", [None, DEFAULT_SPEC, ContextSpec(features=False), ContextSpec(smooth_alpha=1.0)])
def test_both_probabilities_from_one_pass_equal_each_asked_alone(tmp_path, spec):
    table = _grid_table(np.random.default_rng(3))
    features = _features(tmp_path, table, spec)
    rows = np.array([5, 0, 77, 143, 6])
    x = features.features(SLIDE, np.arange(len(table)))
    y = (table.boxes[:, 0] >= 240).astype(int) + (table.boxes[:, 1] >= 400).astype(int) * (table.boxes[:, 0] < 100)
    head = LogisticClassifier(3).fit(x, y)  # class-balanced: the shown probabilities differ from the ranked ones
    ranked, shown = features.proba_both(head, SLIDE, rows)
    np.testing.assert_allclose(ranked, features.proba(head, SLIDE, rows, False), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(shown, features.proba(head, SLIDE, rows, True), rtol=1e-5, atol=1e-7)
    assert not np.allclose(ranked, shown)
