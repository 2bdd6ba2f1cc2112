import pytest
from hypothesis import given, strategies as st

from label_config import (
    NEUTRAL_LABEL, CellBox, LabelConfigError, TaskDataError, TileTask, UnknownLabelError, build_label_config,
    cell_to_region, parse_classes, parse_version_name, rank_to_score, read_cell_labels, region_to_slide_box,
    validate_regions, version_name,
)

CLASSES = ["Tumor", "Lymphocyte"]


def _tile(downsample=1.0):
    cells = (CellBox("c1", 110, 210, 10, 8), CellBox("c2", 140, 230, 12, 12))
    return TileTask("t1", "s1", "/img.png", 100, 200, 60, 50, downsample, 0.5, cells)


def test_config_round_trips_classes_and_keeps_neutral_label_first():
    xml = build_label_config(CLASSES)
    assert parse_classes(xml) == CLASSES
    assert xml.index(NEUTRAL_LABEL) < xml.index("Tumor")
    assert 'hotkey="1"' in xml and 'hotkey="0"' in xml


@pytest.mark.parametrize("bad", [[], ["A", "A"], ["A", " "], [NEUTRAL_LABEL], [str(i) for i in range(10)]])
def test_config_rejects_bad_class_lists_with_a_fix(bad):
    with pytest.raises(LabelConfigError):
        build_label_config(bad)


def test_parse_classes_names_the_problem_for_foreign_xml():
    with pytest.raises(LabelConfigError, match="RectangleLabels"):
        parse_classes("<View><Image name='image' value='$image'/></View>")


def test_task_data_round_trip():
    tile = _tile()
    assert TileTask.from_task_data(tile.to_task_data()) == tile


def test_task_data_error_names_the_field():
    data = _tile().to_task_data()
    del data["x0"]
    with pytest.raises(TaskDataError, match="x0"):
        TileTask.from_task_data(data)


@given(st.integers(0, 50), st.integers(0, 40), st.integers(1, 10), st.integers(1, 10),
       st.sampled_from([1.0, 2.0, 4.0]))
def test_region_geometry_round_trips_to_slide_pixels(dx, dy, w, h, downsample):
    tile = TileTask("t", "s", "i", 1000, 2000, 64, 64, downsample, None, ())
    cell = CellBox("c", 1000 + int(dx * downsample), 2000 + int(dy * downsample), int(w * downsample), int(h * downsample))
    region = cell_to_region(cell, tile, "Tumor")
    assert region["id"] == "c"
    assert region_to_slide_box(region, tile) == (cell.x0, cell.y0, cell.w, cell.h)


def test_regions_validate_against_config_and_misspelled_label_is_refused():
    tile = _tile()
    xml = build_label_config(CLASSES)
    validate_regions(xml, [cell_to_region(c, tile, "Tumor") for c in tile.cells])
    with pytest.raises(UnknownLabelError, match="Tumour"):
        validate_regions(xml, [cell_to_region(tile.cells[0], tile, "Tumour")])


def test_read_cell_labels_keeps_good_labels_beside_bad_ones():
    tile = _tile()
    result = [
        cell_to_region(tile.cells[0], tile, "Tumor"),
        cell_to_region(tile.cells[1], tile, "Tumour"),
    ]
    read = read_cell_labels(result, tile, CLASSES)
    assert read.labels == {"c1": "Tumor"}
    assert len(read.problems) == 1 and "Tumour" in read.problems[0]


def test_neutral_label_is_not_a_label_and_unknown_ids_are_hand_drawn_cells():
    tile = _tile()
    drawn = cell_to_region(CellBox("xyz", 120, 220, 6, 6), tile, "Lymphocyte")
    read = read_cell_labels([cell_to_region(tile.cells[0], tile, NEUTRAL_LABEL), drawn], tile, CLASSES)
    assert read.labels == {}
    assert read.drawn == (((120, 220, 6, 6), "Lymphocyte", "xyz"),)


def test_version_names_sort_numerically_and_parse_back():
    names = [version_name(v) for v in (2, 10, 100)]
    assert sorted(names) == names
    assert [parse_version_name(n) for n in names] == [2, 10, 100]
    assert parse_version_name("HALI") is None


def test_rank_scores_increase_so_rank_zero_is_served_first():
    s = rank_to_score(5)
    assert s[0] == s.min() and (s[1:] > s[:-1]).all() and s.max() < 1
