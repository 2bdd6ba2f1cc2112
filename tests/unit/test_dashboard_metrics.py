"""Known answers for the dashboard's figures: labels per hour, suggestions kept, kappa, the gold set, the
description line, and the /metrics exposition."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from label_config import NOT_NUCLEUS_LABEL, CellBox, LabelSet, TileTask, cell_to_region
from ml_backend.dashboard.metrics import (
    AnnotationFact,
    acceptance_by_version,
    agreement,
    annotation_versions,
    cohens_kappa,
    facts_from_records,
    labels_per_hour,
    progress,
    version_at,
)
from ml_backend.dashboard.page import render_page
from ml_backend.dashboard.snapshot import STATUS_MARK, build_snapshot, status_line, with_status_line
from ml_backend.dashboard.summary import prometheus_text, summary
from ml_backend.labels.records import record_from_annotation
from ml_backend.model.gold import gold_scores, is_gold, training_labels
from ml_backend.retrain.cells import CellLayout, gather_cells
from ml_backend.retrain.run import _gold_metrics
from ml_backend.settings import BackendSettings

LABELS = LabelSet(("Tumor", "Other"))


def _fact(aid, who, labels, lead=60.0, saved=0.0, kept=0, changed=0, pred=None, task=1):
    return AnnotationFact(aid, task, "s1", who, saved, lead, pred, labels, kept, changed)


def _tile(n=4, tile_id="t1", slide="s1"):
    cells = tuple(CellBox(f"{slide}-{tile_id}-{i}", 100 + 20 * i, 100, 10, 10) for i in range(n))
    return TileTask(tile_id, slide, "/img.png", 90, 90, 200, 30, 1.0, 0.5, cells)


def test_labels_per_hour_is_labels_over_lead_time_hours():
    facts = [_fact(1, "ann", {f"c{i}": "Tumor" for i in range(20)}, lead=600),
             _fact(2, "ann", {f"d{i}": "Other" for i in range(10)}, lead=300),
             _fact(3, "bob", {"e": "Tumor"}, lead=0)]
    rows = labels_per_hour(facts)
    assert rows["ann"] == {"labels": 30, "annotations": 2, "hours": 0.25, "labels_per_hour": 120.0}
    assert rows["bob"]["labels_per_hour"] is None  # no lead time: no rate, not a division by zero


def test_suggestions_are_kept_by_origin_and_changed_by_origin_or_deletion():
    tile = _tile(4)
    result = [cell_to_region(tile.cells[0], tile, "Tumor"), cell_to_region(tile.cells[1], tile, "Tumor"),
              cell_to_region(tile.cells[2], tile, "Other")]  # cell 3's box was deleted
    for region, origin in zip(result, ["prediction", "prediction", "prediction-changed"]):
        region["origin"] = origin
    labels = {c.cell_id: lab for c, lab in zip(tile.cells, ["Tumor", "Tumor", "Other", NOT_NUCLEUS_LABEL])}
    ann = {"id": 9, "result": result, "completed_by": 3, "lead_time": 12.0, "updated_at": "2026-12-01T10:00:00Z",
           "parent_prediction": 77}
    record, _ = record_from_annotation(ann, 5, tile, LABELS)  # what the label mirror keeps
    assert record.labels == labels
    (fact,) = facts_from_records({9: record}, {5: tile}, {3: "ann@lab"})
    assert (fact.kept, fact.changed, fact.annotator, fact.prediction_id) == (2, 2, "ann@lab", 77)
    rows = acceptance_by_version([fact], {9: "hali-v0003"})
    assert rows == {"hali-v0003": {"annotations": 1, "kept": 2, "changed": 2, "kept_share": 0.5}}


def test_acceptance_leaves_out_the_model_less_version_and_dates_unknown_predictions():
    versions = [(100.0, "hali-v0001"), (200.0, "hali-v0002")]
    assert version_at(50.0, versions) is None and version_at(150.0, versions) == "hali-v0001"
    facts = [_fact(1, "a", {}, kept=3, changed=1, pred=11, saved=500.0),  # known prediction: v1
             _fact(2, "a", {}, kept=1, changed=0, pred=12, saved=260.0, lead=20.0),  # deleted: opened at 240 -> v2
             _fact(3, "a", {}, kept=0, changed=5, pred=13)]  # hali-v0000 had no classes to keep
    of = annotation_versions(facts, {11: "hali-v0001", 13: "hali-v0000"}, versions)
    assert of == {1: "hali-v0001", 2: "hali-v0002", 3: "hali-v0000"}
    rows = acceptance_by_version(facts, of)
    assert list(rows) == ["hali-v0001", "hali-v0002"] and rows["hali-v0001"]["kept_share"] == 0.75


def test_cohens_kappa_known_answers():
    # The textbook example: 50 items, yes/no, 20 yes-yes, 15 no-no, 5 yes-no, 10 no-yes -> kappa 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    assert cohens_kappa(["x", "y"], ["x", "y"]) == 1.0
    assert cohens_kappa(["x", "x"], ["x", "x"]) == 1.0  # one label throughout, all agree
    assert cohens_kappa([], []) is None
    with pytest.raises(ValueError, match="one length"):
        cohens_kappa(["x"], [])


def test_agreement_pairs_annotators_on_shared_cells_only():
    facts = [_fact(1, "ann", {"c1": "T", "c2": "T", "c3": "O", "c9": "T"}),
             _fact(2, "bob", {"c1": "T", "c2": "O", "c3": "O"}),
             _fact(3, "bob", {"c2": "T"}, saved=10.0)]  # bob's later save of c2 wins
    out = agreement(facts)
    assert out["cells"] == 3 and out["kappa"] == 1.0
    assert out["pairs"] == [{"a": "ann", "b": "bob", "cells": 3, "kappa": 1.0, "agree": 1.0}]


def test_progress_counts_tasks_and_labelled_cells_per_slide_and_class():
    t1, t2, t3 = _tile(4, "t1", "s1"), _tile(3, "t2", "s1"), _tile(2, "t3", "s2")
    labels = {t1.cells[0].cell_id: "Tumor", t1.cells[1].cell_id: "Tumor", t1.cells[2].cell_id: NOT_NUCLEUS_LABEL}
    out = progress({1: t1, 2: t2, 3: t3}, [1], labels, LABELS.targets)
    assert out["slides"]["s1"] == {"tasks": 2, "tasks_done": 1, "cells": 7, "cells_labelled": 3,
                                   "per_class": {"Tumor": 2, "Other": 0, NOT_NUCLEUS_LABEL: 1}}
    assert out["total"]["tasks"] == 3 and out["total"]["cells"] == 9 and out["total"]["per_class"]["Tumor"] == 2


def test_the_gold_set_is_deterministic_about_its_share_and_kept_out_of_training():
    ids = [f"slide-{i}" for i in range(20_000)]
    gold = [c for c in ids if is_gold(c, 0.1)]
    assert gold == [c for c in ids if is_gold(c, 0.1)]  # same cells every call (and process: blake2b)
    assert 0.09 < len(gold) / len(ids) < 0.11
    assert set(gold) <= {c for c in ids if is_gold(c, 0.2)}  # a larger share only adds cells
    assert not any(is_gold(c, 0.0) for c in ids[:100])
    labels = dict.fromkeys(ids, "Tumor")
    train = training_labels(labels, 0.1)
    assert len(train) == len(ids) - len(gold) and not set(train) & set(gold)


class _Index:
    """Cell features (``CellFeatures``' interface): a cell's number, so rows can be traced back to cells; its
    shown class: the cell's number modulo 2 (Tumor for odd, Other for even), as one-hot probabilities."""

    def rows(self, tile):
        return np.array([int(c.cell_id.rsplit("-", 1)[1]) for c in tile.cells], np.int64)

    def features(self, slide_id, rows):
        return np.asarray(rows, np.float32)[:, None]

    def proba(self, head, slide_id, rows, suggest=True):
        odd = np.asarray(rows) % 2
        return np.stack([odd, 1 - odd, np.zeros_like(odd)], axis=1).astype(np.float32)


def test_the_retrains_fit_rows_hold_no_gold_cell_and_gold_cells_are_scored():
    tile = _tile(200)
    labels = {c.cell_id: ("Tumor" if i % 2 else "Other") for i, c in enumerate(tile.cells)}
    gold = {c for c in labels if is_gold(c, 0.25)}
    assert gold, "the fixture must hold some gold cells"
    layout = CellLayout.build({1: tile}, _Index())
    cells = gather_cells(layout, {1: tile}, [], {1}, training_labels(labels, 0.25), list(LABELS.targets), _Index())
    fitted = {tile.cells[int(v)].cell_id for v in cells.features[cells.y >= 0, 0]}
    assert fitted == set(labels) - gold
    settings = BackendSettings(gold_share=0.25)
    scored = _gold_metrics({1: tile}, labels, list(LABELS.targets), None, settings, _Index())["gold"]
    assert scored == {"n": len(gold), "accuracy": 1.0, "balanced_accuracy": 1.0}
    wrong = {c: ("Other" if lab == "Tumor" else "Tumor") for c, lab in labels.items()}
    assert _gold_metrics({1: tile}, wrong, list(LABELS.targets), None, settings, _Index())["gold"]["accuracy"] == 0.0


def test_gold_scores_accuracy_and_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0, 0, 1])
    assert gold_scores(y, pred) == {"n": 6, "accuracy": 0.8333, "balanced_accuracy": 0.75}
    assert gold_scores(np.zeros(0, int), np.zeros(0, int))["accuracy"] is None


def test_the_status_line_replaces_only_its_own_line():
    mine = "Ki-67 cohort 3, second reader.\nAsk Ana before relabelling."
    first = with_status_line(mine, f"{STATUS_MARK} 10 labels")
    assert first == mine + f"\n{STATUS_MARK} 10 labels"
    second = with_status_line(first, f"{STATUS_MARK} 15 labels")
    assert second == mine + f"\n{STATUS_MARK} 15 labels"
    assert with_status_line(None, "x") == "x"
    line = status_line({"n_labels": 1234, "model_version": "hali-v0007", "kept_share": 0.64,
                        "learning_curve": []}, "http://b:9090/dashboard/3")
    assert line == f"{STATUS_MARK} 1,234 labels · model hali-v0007 · 64% of suggestions kept · " \
                   "dashboard http://b:9090/dashboard/3"


def _snapshot():
    t1 = _tile(4)
    facts = [_fact(1, 'ann "quoted"', {t1.cells[0].cell_id: "Tumor"}, kept=1, changed=0, pred=5)]
    sidecars = [{"version": 1, "model_version": "hali-v0001", "created_at": "2026-12-01T00:00:00+00:00",
                 "metrics": {"n_labels": 1, "n_train": 1, "gold": {"n": 2, "accuracy": 0.5, "balanced_accuracy": 0.5}}}]
    return build_snapshot(3, facts, {1: t1}, {t1.cells[0].cell_id: "Tumor"}, LABELS.targets, sidecars,
                          {5: "hali-v0001"}, {"Tumor": (255, 0, 0)}, 0.1)


def test_prometheus_text_parses_and_carries_the_headline_figures():
    text = prometheus_text([summary(_snapshot(), pending=4)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {f: {tuple(sorted(s.labels.items())): s.value for s in families[f].samples} for f in families}
    assert value["hali_labels"] == {(("project", "3"),): 1.0}
    assert value["hali_labels_pending"] == {(("project", "3"),): 4.0}
    assert value["hali_model_version"] == {(("project", "3"),): 1.0}
    assert value["hali_suggestions_kept_ratio"] == {(("project", "3"),): 1.0}
    assert value["hali_labels_by_class"][(("class", "Tumor"), ("project", "3"))] == 1.0
    assert value["hali_annotator_labels"] == {(("annotator", 'ann "quoted"'), ("project", "3")): 1.0}


def test_the_page_renders_every_section_and_escapes_names():
    html = render_page(_snapshot(), pending=4)
    for heading in ("Progress per slide", "labels per hour", "Suggestions kept", "Learning curve", "Agreement",
                    "Coverage"):
        assert heading in html
    assert 'ann &#34;quoted&#34;' in html and 'ann "quoted"' not in html


def test_the_coverage_map_tints_done_tasks_and_dots_labelled_cells_on_a_white_canvas():
    import io

    from PIL import Image

    from ml_backend.dashboard.coverage import coverage_png

    done = _tile(4, "t1")
    open_ = TileTask("t2", "s1", "/img.png", 90, 400, 200, 30, 1.0, 0.5,
                     tuple(CellBox(f"o{i}", 100 + 20 * i, 400, 10, 10) for i in range(4)))
    labels = {done.cells[0].cell_id: "Tumor"}
    image = np.asarray(Image.open(io.BytesIO(coverage_png([done, open_], {"t1"}, labels, {"Tumor": (255, 0, 0)}))))
    assert image.shape[2] == 3 and image.shape[0] > 400
    x, y = 105, 105  # the labelled cell's centre (downsample 1: canvas pixels are level-0 px)
    assert tuple(image[y, x]) == (255, 0, 0)
    assert tuple(image[102, 150]) != (255, 255, 255)  # the done task is tinted
    assert tuple(image[405, 130]) == (255, 255, 255) and tuple(image[400, 130]) == (150, 150, 150)  # open: outlined
    from ml_backend.dashboard.coverage import draw_coverage, task_spans
    from ml_backend.labels.tile_store import TileStore

    store = TileStore.from_tiles({1: done, 2: open_}.items())
    drawn = draw_coverage(task_spans(store, [1, 2]), np.array([True, False]), [store[1]], labels,
                          {"Tumor": (255, 0, 0)})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(drawn))), image)  # the same map from arrays


@pytest.mark.parametrize("name", ["progress", "annotators", "acceptance", "learning"])
def test_every_plot_draws_a_png_with_data_and_without(name):
    from ml_backend.dashboard.plots import PLOTS

    full = _snapshot()
    empty = {**full, "progress": {"slides": {}, "total": full["progress"]["total"]}, "labels_over_time": {},
             "acceptance": {}, "learning_curve": []}
    for snapshot in (full, empty):
        assert PLOTS[name](snapshot)[:4] == b"\x89PNG"


def test_the_slide_file_is_read_from_tasks_json_once_per_version(tmp_path, monkeypatch):
    from adapters.storage import LocalStorage
    from ml_backend.dashboard import publish
    from preprocess.layout import write_slide_meta

    settings = BackendSettings(data_dir=tmp_path, ls_files_root=tmp_path / "files")
    storage, real_read, reads = LocalStorage(tmp_path), publish.read_slide_meta, []

    def counting_read(tables, slide_id, tile_hook=None):
        reads.append(slide_id)
        return real_read(tables, slide_id, tile_hook)

    monkeypatch.setattr(publish, "read_slide_meta", counting_read)
    write_slide_meta(storage, "s9", {"slide_path": "/slides/s9.svs", "mpp": 0.25, "tiles": []})
    assert publish._slide_file(settings, "s9") == ("/slides/s9.svs", 0.25)
    assert publish._slide_file(settings, "s9") == ("/slides/s9.svs", 0.25)
    assert reads == ["s9"]
    write_slide_meta(storage, "s9", {"mpp": 0.25, "tiles": [], "note": "a re-run that lost the slide file"})
    with pytest.raises(KeyError):
        publish._slide_file(settings, "s9")
    assert reads == ["s9", "s9"]
