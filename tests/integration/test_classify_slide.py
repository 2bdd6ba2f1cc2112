"""The whole-slide result: after a retrain, `hali classify` gives every cell of the project's slide a class,
with densities per mm² of tissue and an overlay, from the cached features (no segmentation again)."""

from __future__ import annotations

import csv

import pytest
from hali_backend import label_next_task, preprocess_settings
from PIL import Image

from adapters.label_studio import LabelStudioGateway
from ml_backend.cli import main
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


def test_classify_writes_every_cell_densities_and_an_overlay(hali_environ, label_studio, redis_conn, ihc_slide,
                                                             new_annotator, tmp_path):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = run_preprocess(ihc_slide, "HALI classify", preprocess_settings(classes="Positive,Negative", mpp=0.25,
                                                                              cells_per_task=10), gateway)
    annotator = new_annotator()
    label_next_task(annotator, result.project_id, n_cells=None)
    run_retrain(result.project_id, BackendSettings(), gateway, RedisLabelStore(redis_conn))

    out = tmp_path / "classified"
    assert main(["classify", "--project", "HALI classify", "--out", str(out), "--geojson"]) == 0
    cells = list(csv.DictReader((out / f"{result.slide_id}.csv").open()))
    assert len(cells) == result.n_cells and {c["class"] for c in cells} <= {"Positive", "Negative", "Not a nucleus"}
    assert all(c["model_version"] == "hali-v0001" for c in cells)
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert sum(int(r["cells"]) for r in summary) == result.n_cells
    assert all(float(r["per_mm2"]) >= 0 for r in summary if r["class"] != "Not a nucleus")
    assert float(summary[0]["tissue_mm2"]) > 0
    assert Image.open(out / f"{result.slide_id}-overlay.png").size[0] > 0
    assert (out / f"{result.slide_id}.geojson").stat().st_size > 0
