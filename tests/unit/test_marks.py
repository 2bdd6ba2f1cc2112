"""Cells marked by a dot (KeyPointLabels) instead of a box: config, regions, labels read back by cell id."""

from __future__ import annotations

import pytest

from label_config import (
    NEUTRAL_LABEL,
    CellBox,
    LabelSet,
    TileTask,
    build_label_config,
    cells_to_regions,
    parse_classes,
    parse_mark,
    read_cell_labels,
    validate_regions,
)

CLASSES = ["Tumor", "Lymphocyte"]


def _tile(mark: str = "keypoint", downsample: float = 2.0) -> TileTask:
    cells = (CellBox("c1", 110, 210, 10, 8), CellBox("c2", 140, 230, 12, 12))
    return TileTask("t1", "s1", "/img.png", 100, 200, 30, 25, downsample, 0.25, cells, mark)


@pytest.mark.parametrize("mark", ["rectangle", "keypoint"])
def test_config_round_trips_classes_and_mark(mark: str) -> None:
    xml = build_label_config(CLASSES, mark)
    assert parse_classes(xml) == CLASSES and parse_mark(xml) == mark
    assert ("KeyPointLabels" in xml) == (mark == "keypoint")


def test_default_config_is_unchanged_rectangles() -> None:
    assert build_label_config(CLASSES) == build_label_config(CLASSES, "rectangle")
    assert "<RectangleLabels" in build_label_config(CLASSES)


def test_keypoint_regions_are_dots_at_cell_centres_with_cell_ids() -> None:
    tile = _tile()
    regions = cells_to_regions(list(tile.cells), tile, ["Tumor", NEUTRAL_LABEL], [0.9, 0.5])
    assert [r["id"] for r in regions] == ["c1", "c2"]
    assert all(r["type"] == "keypointlabels" and "height" not in r["value"] for r in regions)
    # c1's centre (115, 214) is (15, 14) level-0 px = (7.5, 7) tile px into a 30 x 25 px tile.
    assert regions[0]["value"]["x"] == pytest.approx(25.0) and regions[0]["value"]["y"] == pytest.approx(28.0)
    assert regions[0]["value"]["keypointlabels"] == ["Tumor"] and regions[0]["score"] == 0.9
    validate_regions(build_label_config(CLASSES, "keypoint"), regions)


def test_labels_on_keypoints_come_back_by_cell_id_and_hand_drawn_dots_by_place() -> None:
    tile = _tile()
    regions = cells_to_regions(list(tile.cells), tile, ["Lymphocyte", NEUTRAL_LABEL])
    drawn = {"id": "new1", "from_name": "cell", "to_name": "image", "type": "keypointlabels",
             "value": {"x": 50.0, "y": 40.0, "width": 0.8, "keypointlabels": ["Tumor"]}}
    read = read_cell_labels([*regions, drawn], tile, LabelSet(tuple(CLASSES)))
    assert read.labels == {"c1": "Lymphocyte"} and read.problems == ()
    assert read.drawn == (((130, 220, 1, 1), "Tumor", "new1"),)


def test_rectangle_task_data_has_no_mark_field_and_old_data_reads_as_rectangles() -> None:
    data = _tile("rectangle").to_task_data()
    assert "mark" not in data and TileTask.from_task_data(data).mark == "rectangle"
    keypoint = _tile("keypoint")
    assert keypoint.to_task_data()["mark"] == "keypoint"
    assert TileTask.from_task_data(keypoint.to_task_data()) == keypoint
