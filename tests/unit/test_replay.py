"""The end-to-end replay's pure parts: crop grid and stitching, ground-truth matching, time-model arithmetic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.replay.scoring import (
    NOT_NUCLEUS,
    TaskRecord,
    answer_task,
    is_stale,
    map_class,
    map_classes,
    match_boxes,
    retrain_lags,
    summarize,
)
from ml_backend.simulation.efficiency import TimeModel
from preprocess.datasets.consep import StitchError, crop_origins, load_consep_split, stitch_image, stitch_nuclei

CONSEP = Path(__file__).resolve().parents[2].parent / "shared/data/consep_patches"


def test_crop_origins_are_a_flush_sliding_window_in_name_order():
    origins = crop_origins(1000, 256)
    assert len(origins) == 16
    assert origins[:3] == [(0, 0), (256, 0), (512, 0)]
    assert origins[9:12] == [(0, 744), (256, 744), (512, 744)]
    assert origins[12:15] == [(744, 0), (744, 256), (744, 512)]
    assert origins[15] == (744, 744)


def _crops_of(source: np.ndarray, origins, crop_px: int) -> list[np.ndarray]:
    return [source[y:y + crop_px, x:x + crop_px] for x, y in origins]


def test_stitch_image_rebuilds_the_source_and_refuses_a_wrong_order():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    origins = crop_origins(40, 16)  # 0, 16 and the flush 24: 2 x 2, bottom row, right column, corner
    assert len(origins) == 9
    image, mad = stitch_image(_crops_of(source, origins, 16), origins, 40)
    assert np.array_equal(image, source) and mad == 0.0
    shuffled = _crops_of(source, origins, 16)
    shuffled[0], shuffled[3] = shuffled[3], shuffled[0]
    with pytest.raises(StitchError):
        stitch_image(shuffled, origins, 40)


def test_a_nucleus_cut_by_a_crop_border_becomes_one_nucleus_at_its_true_centroid():
    inst = np.zeros((40, 40), np.uint16)
    inst[20:26, 13:21] = 1  # straddles x = 16 .. 24, the overlap of crops 0 and 1 (and crosses 16)
    inst[2:6, 2:6] = 2
    origins = crop_origins(40, 16)
    crops = _crops_of(inst, origins, 16)
    classes = []
    for crop in crops:  # relabel 1..n per crop, as the CSV's inst_id does
        ids = [i for i in (1, 2) if (crop == i).any()]
        crop[...] = np.select([crop == i for i in ids], [k + 1 for k in range(len(ids))], 0) if ids else 0
        classes.append(["inflammatory" if i == 1 else "epithelial" for i in ids])
    nuclei = stitch_nuclei(crops, classes, origins, 40)
    assert len(nuclei.xy) == 2
    order = np.argsort(nuclei.xy[:, 0])
    np.testing.assert_allclose(nuclei.xy[order], [[3.5, 3.5], [16.5, 22.5]])
    assert list(nuclei.label[order]) == ["epithelial", "inflammatory"]


@pytest.mark.skipif(not (CONSEP / "inst_maps_test.npz").exists(), reason="no CoNSeP patches in ../shared/data")
def test_consep_test_image_stitches_with_jpeg_noise_only_overlaps():
    image, nuclei, mad = load_consep_split(CONSEP, "test", limit_images=1)["test_1"]
    assert image.shape == (1000, 1000, 3)
    assert mad < 5.0
    assert 0.85 * nuclei.n_crop_rows < len(nuclei.xy) < nuclei.n_crop_rows  # overlaps counted once


def test_match_boxes_takes_the_nearest_centroid_within_the_radius():
    gt = np.array([[10.0, 10.0], [30.0, 10.0]])
    centres = np.array([[12.0, 10.0], [21.0, 10.0], [30.0, 22.0], [30.0, 22.1]])
    assert match_boxes(centres, gt, 12.0).tolist() == [0, 1, 1, -1]
    assert match_boxes(centres, np.zeros((0, 2)), 12.0).tolist() == [-1, -1, -1, -1]


def test_class_maps_follow_hali_simulate():
    tils = {"inflammatory": "TIL", "*": "other"}
    assert map_class("inflammatory", tils) == "TIL" and map_class("spindle", tils) == "other"
    assert map_classes(tils, ["epithelial", "inflammatory"]) == ["TIL", "other"]
    assert map_classes(None, ["a", "b"]) == ["a", "b"]


def test_answer_task_prices_as_hali_simulate():
    tm = TimeModel()  # 1 per unassisted cell, 0.1 review, 1 per wrong, 3 per task
    unassisted = answer_task([None, None, None], ["a", None, "b"], None, tm)
    assert unassisted.n_wrong is None and unassisted.cost == 3 + 3 and unassisted.submitted == ("a", None, "b")
    assisted = answer_task(["a", "a", "b", None], ["a", None, "a", "b"], "Not a nucleus", tm)
    assert (assisted.n_suggested, assisted.n_kept, assisted.n_wrong) == (3, 1, 3)
    assert assisted.cost == pytest.approx(3 + 0.4 + 3) and assisted.unassisted_cost == 7
    assert assisted.submitted == ("a", "Not a nucleus", "a", "b")
    kept_non_nucleus = answer_task(["Not a nucleus"], [None], "Not a nucleus", tm)
    assert kept_non_nucleus.n_kept == 1 and kept_non_nucleus.n_wrong == 0


def test_summarize_and_lags():
    rec = lambda wrong, cost, base, **kw: TaskRecord(
        1, 1, "s", None, False, 10, 8, 0, 0, 10 if wrong is not None else 0, 10 - (wrong or 10), wrong, cost, base,
        {"a": 8, NOT_NUCLEUS: 2})
    records = [rec(None, 13, 13), rec(2, 6, 13)]
    totals = summarize(records, Counter({"a": 80, NOT_NUCLEUS: 20}), [1.0, None])
    assert totals["speedup"] == pytest.approx(26 / 19) and totals["speedup_assisted"] == pytest.approx(13 / 6)
    assert totals["nuclei_share"] == 0.8 and totals["kept_share_of_boxes"] == 0.4
    assert totals["retrain_lag_median_s"] == 1.0 and totals["retrain_lag_unmeasured"] == 1
    assert retrain_lags([1.0, 2.0, 5.0], [1.5, 4.0]) == [0.5, 2.0, None]
    assert not is_stale(1.0, [], [])
    assert is_stale(3.0, [2.0], [1.5]) and not is_stale(3.0, [2.0], [2.5])
