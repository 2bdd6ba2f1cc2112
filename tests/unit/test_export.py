"""Export rows and formats: slide coordinates, consensus over overlap annotations, QuPath GeoJSON and COCO."""

from __future__ import annotations

import csv
import io

import pytest

from label_config import CellBox, TileTask, build_label_config, cell_to_region
from ml_backend.export.formats import label_colours, to_coco, to_csv, to_geojson
from ml_backend.export.rows import cell_rows

CLASSES = ["Tumor", "Lymphocyte"]
TILE = TileTask("t1", "slideA", "/data/local-files/?d=hali/slideA/t1.png", 1000, 2000, 100, 80, 2.0, 0.25,
                (CellBox("c1", 1010, 2010, 20, 16), CellBox("c2", 1101, 2051, 13, 9), CellBox("c3", 1150, 2100, 8, 8)))


def _annotation(ann_id, user, labels, updated, suggestions=None, lead_time=6.0, changed=()):
    result = []
    for cell in TILE.cells:
        if cell.cell_id in labels:
            region = cell_to_region(cell, TILE, labels[cell.cell_id])
            region["origin"] = "prediction-changed" if cell.cell_id in changed else "prediction"
            result.append(region)
    prediction = {"model_version": "hali-v0003", "result": [cell_to_region(c, TILE, lab) for c, lab in
                                                            (suggestions or {}).items()]}
    return {"id": ann_id, "completed_by": user, "result": result, "updated_at": updated, "lead_time": lead_time,
            "was_cancelled": False, "prediction": prediction}


def _task(*annotations):
    return {"id": 7, "data": TILE.to_task_data(), "annotations": list(annotations), "predictions": []}


def test_rows_are_in_slide_pixels_and_carry_the_suggestion_kept_or_changed():
    suggested = {TILE.cells[0]: "Tumor", TILE.cells[1]: "Tumor"}
    ann = _annotation(1, 11, {"c1": "Tumor", "c2": "Lymphocyte"}, "2026-12-01T10:00:00Z", suggested, changed={"c2"})
    rows = cell_rows([_task(ann)])
    assert [r.cell_id for r in rows] == ["c1", "c2"]
    c1, c2 = rows
    assert c1.box == pytest.approx((1010, 2010, 20, 16)) and c1.centroid_xy == pytest.approx((1020, 2018))
    assert c2.centroid_xy == pytest.approx((1107.5, 2055.5), abs=1e-6)
    assert (c1.latest.suggestion, c1.latest.kept, c1.latest.model_version) == ("Tumor", True, "hali-v0003")
    assert (c2.label, c2.latest.suggestion, c2.latest.kept) == ("Lymphocyte", "Tumor", False)
    assert c1.latest.seconds == pytest.approx(3.0)


def test_overlap_gives_the_majority_and_a_tie_goes_to_the_latest_save():
    a = _annotation(1, 11, {"c1": "Tumor", "c2": "Tumor"}, "2026-12-01T10:00:00Z")
    b = _annotation(2, 12, {"c1": "Tumor", "c2": "Lymphocyte"}, "2026-12-01T11:00:00Z")
    c = _annotation(3, 13, {"c1": "Lymphocyte"}, "2026-12-01T12:00:00Z")
    rows = {r.cell_id: r for r in cell_rows([_task(a, b, c)])}
    assert (rows["c1"].label, rows["c1"].agreement) == ("Tumor", pytest.approx(2 / 3))
    assert (rows["c2"].label, rows["c2"].agreement) == ("Lymphocyte", 0.5)


def test_excluded_labels_and_skipped_tasks_give_no_rows():
    a = _annotation(1, 11, {"c1": "Tumor", "c3": "Lymphocyte"}, "2026-12-01T10:00:00Z")
    skipped = dict(_annotation(2, 12, {"c2": "Tumor"}, "2026-12-01T11:00:00Z"), was_cancelled=True)
    assert [r.cell_id for r in cell_rows([_task(a, skipped)], excluded=("Lymphocyte",))] == ["c1"]


def test_csv_has_px_and_um_and_one_line_per_cell():
    a = _annotation(1, 11, {"c1": "Tumor", "c2": "Lymphocyte"}, "2026-12-01T10:00:00Z")
    records = list(csv.DictReader(io.StringIO(to_csv(cell_rows([_task(a)])))))
    assert len(records) == 2 and records[0]["class"] == "Tumor" and records[0]["annotators"] == "11:Tumor"
    assert float(records[0]["centroid_x_px"]) == 1020 and float(records[0]["centroid_x_um"]) == 255.0


def test_geojson_is_what_qupath_reads_as_detections_with_class_colours():
    a = _annotation(1, 11, {"c1": "Tumor"}, "2026-12-01T10:00:00Z")
    colours = label_colours(build_label_config(CLASSES))
    docs = to_geojson(cell_rows([_task(a)]), colours)
    feature = docs["slideA"]["features"][0]
    assert docs["slideA"]["type"] == "FeatureCollection"
    assert feature["geometry"]["type"] == "Polygon"
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] == [1010, 2010] and [1030, 2026] in ring
    props = feature["properties"]
    assert props["objectType"] == "detection" and props["classification"]["name"] == "Tumor"
    assert props["classification"]["color"] == list(colours["Tumor"]) and len(props["classification"]["color"]) == 3
    assert len(feature["id"]) == 36  # a UUID, as QuPath writes object ids


def test_coco_boxes_are_in_the_tile_image_pixels():
    a = _annotation(1, 11, {"c1": "Tumor", "c2": "Lymphocyte"}, "2026-12-01T10:00:00Z")
    doc = to_coco(cell_rows([_task(a)]), [_task(a)], CLASSES)
    assert [c["name"] for c in doc["categories"]] == CLASSES
    assert doc["images"][0]["width"] == 100 and doc["annotations"][0]["bbox"] == [5.0, 5.0, 10.0, 8.0]
    assert doc["annotations"][1]["category_id"] == 2
