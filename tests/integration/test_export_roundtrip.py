"""A data scientist's round trip: synthetic slide -> tasks in a real Label Studio -> labels submitted as the UI
does -> ``hali export`` -> the same cells, classes and centroids in slide coordinates."""

from __future__ import annotations

import csv
import json

import pytest
from hali_backend import preprocess_settings

from adapters.label_studio import LabelStudioGateway
from label_config import TileTask
from ml_backend.cli import main
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration
CLASSES = ("Positive", "Negative")


def test_labels_come_back_in_slide_coordinates_in_every_format(hali_environ, label_studio, ihc_slide, new_annotator,
                                                               tmp_path):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = run_preprocess(ihc_slide, "HALI export", preprocess_settings(classes=",".join(CLASSES), cells_per_task=8,
                                                                           mpp=0.25), gateway)
    annotator, truth = new_annotator(), {}
    for k in range(3):  # three tasks, every cell given a class, one box nudged as an annotator might
        task = annotator.next_task(result.project_id)
        tile = TileTask.from_task_data(task["data"])
        regions = [dict(r, value=dict(r["value"])) for r in task["predictions"][0]["result"]]
        for i, (region, cell) in enumerate(zip(regions, tile.cells)):
            label = CLASSES[(i + k) % 2]
            region["value"]["rectanglelabels"] = [label]
            region["origin"] = "prediction-changed"
            truth[cell.cell_id] = (label, cell.centroid_xy)
        annotator.submit(task["id"], regions, lead_time=10.0, project_id=result.project_id)

    assert main(["export", "--project", "HALI export", "--format", "csv", "--out", str(tmp_path / "cells.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "cells.csv").open()))
    assert len(rows) == len(truth)
    for row in rows:
        label, (cx, cy) = truth[row["cell_id"]]
        assert row["class"] == label and row["annotators"].endswith(f":{label}")
        assert abs(float(row["centroid_x_px"]) - cx) <= 0.5 and abs(float(row["centroid_y_px"]) - cy) <= 0.5
        assert float(row["centroid_x_um"]) == pytest.approx(float(row["centroid_x_px"]) * 0.25, abs=1e-3)

    assert main(["export", "--project", str(result.project_id), "--format", "geojson", "--out",
                 str(tmp_path / "geo")]) == 0
    (doc_path,) = (tmp_path / "geo").glob("*.geojson")
    features = json.loads(doc_path.read_text())["features"]
    assert sorted(f["properties"]["name"] for f in features) == sorted(truth)
    assert {f["properties"]["classification"]["name"] for f in features} == set(CLASSES)

    assert main(["export", "--project", str(result.project_id), "--format", "coco", "--out",
                 str(tmp_path / "coco.json")]) == 0
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert len(coco["annotations"]) == len(truth) and len(coco["images"]) == result.n_tiles


def test_an_unknown_project_is_one_line_naming_it(hali_environ, tmp_path, capsys):
    assert main(["export", "--project", "No such project", "--out", str(tmp_path / "x.csv")]) == 2
    assert "no Label Studio project titled 'No such project'" in capsys.readouterr().err
