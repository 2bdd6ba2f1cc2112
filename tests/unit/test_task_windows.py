"""Task windows and task modes: images of at least 256 px centred on their cells and kept inside the slide,
bounded cells per task, each cell in exactly one task, focused tasks marking only their own cells."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from label_config import TileTask
from preprocess.run import make_tasks, task_shape
from preprocess.settings import PreprocessSettings
from preprocess.tiles.images import fit_tiles
from preprocess.tiles.regions import RegionCells
from preprocess.tiles.tasks import build_tiles, task_payload, task_window
from preprocess.tiles.tiling import plan_tiles

SLIDE = (4000, 3000)


class _Names:
    def task_uri(self, key: str) -> str:
        return "/data/local-files/?d=" + key


def _box(cx: float, cy: float, side: int = 10) -> list[int]:
    return [int(cx - side / 2), int(cy - side / 2), side, side]


def _cells(n: int = 2000, seed: int = 0, size=SLIDE, dense_blob: bool = True) -> RegionCells:
    """Uniform cells over ``size`` plus (``dense_blob``) a packed blob that one grid square cannot hold."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(20, np.array(size) - 20, (n, 2))
    if dense_blob:
        xy = np.vstack([xy, rng.normal((1000, 1000), 25, (300, 2))])
    boxes = np.array([_box(x, y) for x, y in xy])
    return RegionCells(xy, boxes, np.zeros((len(xy), 1)))


def _settings(**overrides) -> PreprocessSettings:
    return PreprocessSettings(**{"cells_per_task": 20, **overrides})


def _tasks(cells: RegionCells, mpp: float = 0.25, size=SLIDE, **overrides) -> tuple[object, list[TileTask]]:
    s = _settings(**overrides)
    table, tiles = make_tasks("0123456789abcdef", cells, size, mpp, s, lambda slide, tile: "")
    return table, fit_tiles(tiles, mpp, s.tile_mpp, _Names())


def test_window_is_the_minimum_side_centred_on_the_cells() -> None:
    boxes = np.array([[1000, 2000, 10, 10], [1030, 2010, 10, 10]])  # bounding box 1000..1040 x 2000..2020
    assert task_window(boxes, SLIDE, min_side=512) == (1020 - 256, 2010 - 256, 512, 512)


def test_window_grows_to_hold_every_box_with_its_margin() -> None:
    boxes = np.array([[100, 100, 10, 10], [900, 300, 10, 10]])
    x0, y0, w, h = task_window(boxes, SLIDE, min_side=256, margin=10)
    assert (w, h) == (830, 256)
    assert x0 <= 100 - 10 and x0 + w >= 910 + 10 and y0 <= 100 and y0 + h >= 310


@pytest.mark.parametrize("corner", [(0, 0), (3990, 2990), (0, 2990), (3990, 0)])
def test_window_at_a_slide_edge_is_shifted_inside_not_shrunk(corner) -> None:
    boxes = np.array([[*corner, 10, 10]])
    x0, y0, w, h = task_window(boxes, SLIDE, min_side=512)
    assert (w, h) == (512, 512)
    assert 0 <= x0 and x0 + w <= SLIDE[0] and 0 <= y0 and y0 + h <= SLIDE[1]
    assert x0 <= corner[0] and corner[0] + 10 <= x0 + w and y0 <= corner[1] and corner[1] + 10 <= y0 + h


def test_window_on_a_slide_smaller_than_it_is_the_whole_slide() -> None:
    assert task_window(np.array([[50, 60, 10, 10]]), (300, 200), min_side=512) == (0, 0, 300, 200)


@settings(max_examples=60, deadline=None)
@given(cx=st.floats(0, 3990), cy=st.floats(0, 2990), spread=st.integers(0, 900), min_side=st.integers(1, 3000))
def test_window_holds_its_boxes_and_stays_inside_the_slide(cx, cy, spread, min_side) -> None:
    boxes = np.array([[int(cx), int(cy), 10, 10], [int(min(cx + spread, 3990)), int(cy), 10, 10]])
    x0, y0, w, h = task_window(boxes, SLIDE, min_side=min_side, margin=5)
    assert 0 <= x0 and x0 + w <= SLIDE[0] and 0 <= y0 and y0 + h <= SLIDE[1]
    assert w == min(SLIDE[0], max(min_side, boxes[1, 0] + 10 - boxes[0, 0] + 10)) or w >= min_side
    assert x0 <= boxes[:, 0].min() and boxes[:, 0].max() + 10 <= x0 + w
    assert y0 <= boxes[:, 1].min() and boxes[:, 1].max() + 10 <= y0 + h


@pytest.mark.parametrize("mode", ["tile", "focused"])
def test_every_image_is_at_least_256_px_at_half_a_micron(mode: str) -> None:
    _, tiles = _tasks(_cells(), mpp=0.25, task_mode=mode)
    assert all(t.width >= 256 and t.height >= 256 and t.downsample == 2.0 for t in tiles)


@pytest.mark.parametrize("mode", ["tile", "focused"])
def test_each_cell_is_in_exactly_one_task_and_marked_only_there(mode: str) -> None:
    cells = _cells()
    table, tiles = _tasks(cells, task_mode=mode)
    marked = [c.cell_id for t in tiles for c in t.cells]
    assert sorted(marked) == sorted(table.cell_ids.tolist()) and len(marked) == len(cells)
    by_tile = {t.tile_id: {c.cell_id for c in t.cells} for t in tiles}
    for cell_id, tile_id in zip(table.cell_ids, table.tile_ids):
        assert cell_id in by_tile[tile_id]


def test_tasks_never_hold_more_than_one_and_a_half_times_the_target() -> None:
    _, tiles = _tasks(_cells(), task_mode="tile")
    counts = np.array([len(t.cells) for t in tiles])
    assert counts.max() <= 30 and 14 <= np.median(counts) <= 22
    plain = plan_tiles(_cells().centroids_xy, 20, max_cells=10**9)
    assert np.bincount(plain.tile_index).max() > 60  # the blob's square, which the split cut up


def test_focused_tasks_mark_about_k_cells_in_a_window_that_shows_many_more() -> None:
    cells = _cells(dense_blob=False)
    _, tiles = _tasks(cells, task_mode="focused", focus_cells=8)
    marked = np.array([len(t.cells) for t in tiles])
    assert marked.max() <= 12 and np.median(marked) >= 5
    xy = cells.centroids_xy
    visible = [((xy[:, 0] >= t.x0) & (xy[:, 0] < t.x0 + t.width * t.downsample) & (xy[:, 1] >= t.y0)
                & (xy[:, 1] < t.y0 + t.height * t.downsample)).sum() for t in tiles]
    assert np.median(visible) >= 2 * np.median(marked)
    assert all(t.tile_id.split("-")[1].startswith("f") for t in tiles)


def test_focused_window_shows_about_cells_per_task_cells_of_context_when_that_is_wider() -> None:
    sparse = _cells(n=150, dense_blob=False)  # about 1 cell per 80,000 px^2: 20 cells need ~1260 px
    _, tiles = _tasks(sparse, mpp=0.5, task_mode="focused", focus_cells=3)
    assert np.median([t.width for t in tiles]) > 900


def test_marks_are_the_task_cells_only_and_in_the_image() -> None:
    _, tiles = _tasks(_cells(), task_mode="focused")
    for tile in tiles[:50]:
        regions = task_payload(tile, "hali-v0000", 0.0)["predictions"][0]["result"]
        assert [r["id"] for r in regions] == [c.cell_id for c in tile.cells]
        for r in regions:  # boxes are never cut by the image edge
            v = r["value"]
            assert v["x"] > 0 and v["y"] > 0 and v["x"] + v["width"] < 100 and v["y"] + v["height"] < 100


@pytest.mark.parametrize("mode", ["tile", "focused"])
def test_task_data_round_trips(mode: str) -> None:
    _, tiles = _tasks(_cells(n=300), task_mode=mode)
    for tile in tiles:
        assert TileTask.from_task_data(tile.to_task_data()) == tile


def test_build_tiles_without_a_minimum_keeps_the_bounding_box_with_margin() -> None:
    boxes = np.array([[100, 100, 10, 10], [140, 130, 10, 10]])
    tile, = build_tiles("s", ["a", "b"], ["t", "t"], boxes, SLIDE, 0.5, lambda s, t: "")
    assert (tile.x0, tile.y0, tile.width, tile.height) == (90, 90, 70, 60)


def test_changing_the_task_shape_changes_the_recipe() -> None:
    tile, focused = task_shape(_settings()), task_shape(_settings(task_mode="focused"))
    assert tile != focused and task_shape(_settings(tile_min_px=384)) != tile
    assert task_shape(_settings(focus_cells=5)) == tile  # focus_cells only matters to focused tasks


def test_task_mode_and_focus_cells_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("HALI_TASK_MODE", "focused")
    monkeypatch.setenv("HALI_FOCUS_CELLS", "7")
    monkeypatch.setenv("HALI_TILE_MIN_PX", "320")
    s = PreprocessSettings()
    assert (s.task_mode, s.focus_cells, s.tile_min_px) == ("focused", 7, 320)
    monkeypatch.setenv("HALI_TASK_MODE", "grid")
    with pytest.raises(ValueError):
        PreprocessSettings()


def test_keypoint_mark_reaches_every_task_and_its_prediction() -> None:
    _, tiles = _tasks(_cells(n=300, dense_blob=False), mark="keypoint")
    assert {t.mark for t in tiles} == {"keypoint"}
    regions = task_payload(tiles[0], "hali-v0000", 0.0)["predictions"][0]["result"]
    assert {r["type"] for r in regions} == {"keypointlabels"}
    assert task_shape(_settings(mark="keypoint")) != task_shape(_settings())
