import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from label_config import (
    FROM_NAME,
    LEGACY_NEUTRAL_LABEL,
    NEUTRAL_LABEL,
    NOT_NUCLEUS_LABEL,
    TO_NAME,
    CellBox,
    LabelConfigError,
    LabelSet,
    TaskDataError,
    TileTask,
    UnknownLabelError,
    build_label_config,
    cell_to_region,
    cells_to_regions,
    parse_classes,
    parse_label_set,
    parse_version_name,
    rank_to_score,
    read_cell_labels,
    region_to_slide_box,
    validate_regions,
    version_name,
)

CLASSES = ["Tumor", "Lymphocyte"]
LABELS = LabelSet(tuple(CLASSES))

# What build_label_config wrote before "Not a nucleus" existed: existing projects keep this config.
OLD_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true" zoomControl="true" rotateControl="false"/>
  <RectangleLabels name="cell" toName="image" strokeWidth="2" opacity="0.15">
    <Label value="Unclassified" background="#9E9E9E" hotkey="0"/>
    <Label value="Tumor" background="#E69F00" hotkey="1"/>
    <Label value="Lymphocyte" background="#56B4E9" hotkey="2"/>
  </RectangleLabels>
</View>
"""


def _tile(downsample=1.0):
    cells = (CellBox("c1", 110, 210, 10, 8), CellBox("c2", 140, 230, 12, 12))
    return TileTask("t1", "s1", "/img.png", 100, 200, 60, 50, downsample, 0.5, cells)


def _hotkeys(xml):
    import xml.etree.ElementTree as ET

    return {lab.get("value"): lab.get("hotkey") for lab in ET.fromstring(xml).iter("Label")}


def test_config_offers_classes_on_digits_not_a_nucleus_on_0_and_the_neutral_label_on_a_letter():
    xml = build_label_config(CLASSES)
    assert parse_classes(xml) == CLASSES
    assert _hotkeys(xml) == {"Tumor": "1", "Lymphocyte": "2", NOT_NUCLEUS_LABEL: "0", NEUTRAL_LABEL: "n"}
    assert parse_label_set(xml) == LabelSet(("Tumor", "Lymphocyte"), not_nucleus=True, neutral=NEUTRAL_LABEL)
    assert parse_label_set(xml).targets == ("Tumor", "Lymphocyte", NOT_NUCLEUS_LABEL)


def test_config_shows_an_instruction_line_naming_the_keys():
    import xml.etree.ElementTree as ET

    header = ET.fromstring(build_label_config(CLASSES)).find("Header")
    assert "press 1-2 for its class, or 0 if it is not a nucleus" in header.get("value")
    assert NEUTRAL_LABEL in header.get("value")
    assert "press 1 for" in ET.fromstring(build_label_config(["A"])).find("Header").get("value")


def test_config_is_valid_for_the_sdk_and_not_a_nucleus_regions_fit_it():
    tile = _tile()
    validate_regions(build_label_config(CLASSES), [cell_to_region(tile.cells[0], tile, NOT_NUCLEUS_LABEL),
                                                   cell_to_region(tile.cells[1], tile, NEUTRAL_LABEL)])


def test_configs_made_before_not_a_nucleus_still_parse_with_their_neutral_label():
    assert parse_classes(OLD_CONFIG) == CLASSES
    old = parse_label_set(OLD_CONFIG)
    assert old == LabelSet(tuple(CLASSES), not_nucleus=False, neutral=LEGACY_NEUTRAL_LABEL)
    assert old.targets == tuple(CLASSES)


@pytest.mark.parametrize("bad", [[], ["A", "A"], ["A", " "], [NEUTRAL_LABEL], ["not a nucleus"],
                                 [LEGACY_NEUTRAL_LABEL], [str(i) for i in range(10)]])
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
    read = read_cell_labels(result, tile, LABELS)
    assert read.labels == {"c1": "Tumor"}
    assert len(read.problems) == 1 and "Tumour" in read.problems[0]


def test_neutral_label_is_not_a_label_and_unknown_ids_are_hand_drawn_cells():
    tile = _tile()
    drawn = cell_to_region(CellBox("xyz", 120, 220, 6, 6), tile, "Lymphocyte")
    both = [cell_to_region(tile.cells[0], tile, NEUTRAL_LABEL), cell_to_region(tile.cells[1], tile, NEUTRAL_LABEL)]
    read = read_cell_labels([*both, drawn], tile, LABELS)
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



def _one_cell_region(cell, tile, label, score=None):
    """The one-cell formula cells_to_regions replaced, kept here as the reference it must match exactly."""
    def pct(value_px, size_px):
        return min(100.0, max(0.0, 100.0 * value_px / size_px))

    left = pct((cell.x0 - tile.x0) / tile.downsample, tile.width)
    top = pct((cell.y0 - tile.y0) / tile.downsample, tile.height)
    right = pct((cell.x0 + cell.w - tile.x0) / tile.downsample, tile.width)
    bottom = pct((cell.y0 + cell.h - tile.y0) / tile.downsample, tile.height)
    region = {"id": cell.cell_id, "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
              "original_width": tile.width, "original_height": tile.height, "image_rotation": 0,
              "value": {"x": left, "y": top, "width": right - left, "height": bottom - top, "rotation": 0,
                        "rectanglelabels": [label]}}
    if score is not None:
        region["score"] = float(score)
    return region


@settings(max_examples=60, deadline=None)
@given(
    origin=st.tuples(st.integers(-5000, 5000), st.integers(-5000, 5000)),
    size=st.tuples(st.integers(1, 4096), st.integers(1, 4096)),
    downsample=st.sampled_from([1.0, 2.0, 0.5, 3.7, 16.0]),
    boxes=st.lists(st.tuples(st.integers(-6000, 12000), st.integers(-6000, 12000), st.integers(1, 300),
                             st.integers(1, 300)), max_size=30),
    with_scores=st.booleans(),
)
def test_cells_to_regions_gives_exactly_the_one_cell_formula_for_every_cell(origin, size, downsample, boxes,
                                                                              with_scores):
    cells = tuple(CellBox(f"c{i}", *box) for i, box in enumerate(boxes))
    tile = TileTask("t", "s", "/x.png", origin[0], origin[1], size[0], size[1], downsample, 0.5, cells)
    labels = [("A", "B")[i % 2] for i in range(len(cells))]
    scores = [np.float32(i / 31) for i in range(len(cells))] if with_scores else [None] * len(cells)
    expected = [_one_cell_region(c, tile, lab, s) for c, lab, s in zip(cells, labels, scores)]
    assert cells_to_regions(cells, tile, labels, scores if with_scores else None) == expected
    assert [cell_to_region(c, tile, lab, s) for c, lab, s in zip(cells, labels, scores)] == expected
