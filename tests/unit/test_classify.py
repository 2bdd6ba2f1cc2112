"""Whole-slide results: every cell classified, densities per mm² of tissue, CSV rows and an overlay."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from ml_backend.classify.cells import cells_csv, classify_cells, summary_rows, tissue_area_mm2
from ml_backend.classify.overlay import overlay_png
from ml_backend.model.linear import LogisticClassifier
from preprocess.tiles.cells import CellTable

TARGETS = ("Tumor", "TIL", "Not a nucleus")


def _slide(n_per_class: int = 40):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), n_per_class)
    features = (np.eye(3)[y] * 6 + rng.normal(size=(len(y), 3))).astype(np.float32)
    boxes = np.c_[rng.integers(0, 1000, (len(y), 2)), np.full((len(y), 2), 8)]
    table = CellTable(np.array([f"c{i}" for i in range(len(y))]), boxes, np.array(["t"] * len(y)), features)
    return table, y, LogisticClassifier(3).fit(features, y)


def test_every_cell_gets_its_class_and_nuclei_densities_leave_non_nuclei_out():
    table, y, model = _slide()
    result = classify_cells(table, "s1", model, TARGETS, "hali-v0003", mpp=0.5, tissue_mm2=0.25)
    assert (result.labels == np.asarray(TARGETS)[y]).mean() > 0.95
    assert result.counts() == {t: int((result.labels == t).sum()) for t in TARGETS}
    assert set(result.densities_per_mm2()) == {"Tumor", "TIL"}
    assert result.densities_per_mm2()["TIL"] == pytest.approx(result.counts()["TIL"] / 0.25)
    rows = {r["class"]: r for r in summary_rows(result)}
    assert rows["Not a nucleus"]["share_of_nuclei"] is None
    assert rows["Tumor"]["share_of_nuclei"] + rows["TIL"]["share_of_nuclei"] == pytest.approx(1.0)


def test_tissue_area_follows_the_mask_and_the_pixel_size():
    mask = np.zeros((100, 100), bool)
    mask[:50] = True  # 5,000 thumbnail px, each 16 level-0 px of 0.25 um a side: 4 um x 4 um
    assert tissue_area_mm2(mask, downsample=16, mpp=0.25) == pytest.approx(5000 * (16 * 0.25) ** 2 / 1e6)
    assert tissue_area_mm2(mask, 16, None) is None


def test_csv_has_one_row_per_cell_in_slide_and_micrometre_coordinates():
    table, _, model = _slide(5)
    rows = list(csv.DictReader(io.StringIO(cells_csv(classify_cells(table, "s1", model, TARGETS, "v", 0.5, 1.0)))))
    assert len(rows) == 15 and rows[0]["cell_id"] == "c0" and rows[0]["model_version"] == "v"
    x0, w = int(rows[0]["x0_px"]), int(rows[0]["w_px"])
    assert float(rows[0]["centroid_x_px"]) == x0 + w / 2 and float(rows[0]["centroid_x_um"]) == (x0 + w / 2) * 0.5


def test_the_overlay_paints_each_cell_in_its_class_colour():
    table, _, model = _slide(5)
    result = classify_cells(table, "s1", model, TARGETS, "v", 0.5, 1.0)
    thumb = np.full((64, 64, 3), 255, np.uint8)
    colours = {"Tumor": (255, 0, 0), "TIL": (0, 0, 255), "Not a nucleus": (0, 0, 0)}
    image = np.asarray(Image.open(io.BytesIO(overlay_png(thumb, 16.0, result, colours))))
    cx, cy = (result.centroids_xy[0] / 16).astype(int)
    assert image.shape == (64, 64, 3) and tuple(image[cy, cx]) == colours[str(result.labels[0])]
