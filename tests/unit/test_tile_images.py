"""Tile images at one physical resolution: a 40x and a 20x scan of the same tissue give tiles of the same
microns per pixel, and boxes on them map back to the same place on the slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapters.slide_reader import OpenSlideReader
from adapters.storage import LocalStorage
from label_config import CellBox, TileTask, cell_to_region, region_to_slide_box
from preprocess.layout import tile_key
from preprocess.tiles.images import fit_tile, fit_tiles, render_tile, tile_downsample, write_tile_images
from scripts.demo_slide import write_pyramidal_tiff

MPP_40X, MPP_20X = 0.25, 0.5


def _tissue_40x(rows: int = 1024, cols: int = 1024, seed: int = 0) -> np.ndarray:
    """Pink stroma with purple nuclei ~6 um across, at 0.25 um/px: uint8 (rows, cols, 3)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((rows, cols, 3), np.float32)
    rgb[:] = (232, 182, 205)
    r, c = np.indices((rows, cols))
    for cy, cx in rng.uniform(0, (rows, cols), size=(60, 2)):
        rgb[(r - cy) ** 2 + (c - cx) ** 2 < 12**2] = (95, 45, 125)
    return rgb.astype(np.uint8)


def _downsample_2x(rgb: np.ndarray) -> np.ndarray:
    rows, cols = rgb.shape[0] // 2, rgb.shape[1] // 2
    return rgb[: rows * 2, : cols * 2].reshape(rows, 2, cols, 2, 3).astype(np.float32).mean(axis=(1, 3)).round() \
        .astype(np.uint8)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, Path]:
    """The same tissue scanned at 40x (a pyramidal TIFF, levels 1x and 2x) and at 20x (one level)."""
    folder = tmp_path_factory.mktemp("scans")
    tissue = _tissue_40x()
    at40, at20 = folder / "tissue-40x.tiff", folder / "tissue-20x.tiff"
    write_pyramidal_tiff([tissue, _downsample_2x(tissue)], at40, mpp=MPP_40X)
    write_pyramidal_tiff([_downsample_2x(tissue)], at20, mpp=MPP_20X)
    return at40, at20


def _planned(slide_id: str, x0: int, y0: int, w0: int, h0: int, cells: list[tuple[int, int, int, int]],
             mpp: float, tile_id: str = "t0") -> TileTask:
    """A tile as build_tiles makes it: level-0 extent, downsample 1."""
    boxes = tuple(CellBox(f"c{i}", *b) for i, b in enumerate(cells))
    return TileTask(tile_id, slide_id, "", x0, y0, w0, h0, 1.0, mpp, boxes)


def test_downsample_targets_tile_mpp_and_never_upsamples():
    assert tile_downsample(0.25, 0.5) == 2.0
    assert tile_downsample(0.5, 0.5) == 1.0
    assert tile_downsample(1.0, 0.5) == 1.0, "a 10x scan is not upsampled"
    assert tile_downsample(0.49, 0.5) == 1.0, "within 5 % of the target the scan's own pixels are kept"
    assert tile_downsample(0.3, 0.5) == pytest.approx(5 / 3)
    assert tile_downsample(None, 0.5) == 1.0


def test_40x_and_20x_scans_give_tiles_of_the_same_microns_per_pixel(scans, tmp_path):
    at40, at20 = scans
    storage = LocalStorage(tmp_path)
    cells40 = [(400, 500, 48, 40), (700, 620, 24, 30)]
    t40 = _planned("s40", 320, 440, 640, 480, cells40, MPP_40X)
    t20 = _planned("s20", 160, 220, 320, 240, [tuple(v // 2 for v in b) for b in cells40], MPP_20X)
    f40 = fit_tiles([t40], MPP_40X, 0.5, storage)[0]
    f20 = fit_tiles([t20], MPP_20X, 0.5, storage)[0]
    assert (f40.width, f40.height, f40.downsample) == (320, 240, 2.0)
    assert (f20.width, f20.height, f20.downsample) == (320, 240, 1.0)
    # microns per PNG pixel are the same: level-0 mpp times level-0 px per PNG px
    assert MPP_40X * f40.downsample == MPP_20X * f20.downsample == 0.5
    with OpenSlideReader(at40) as r40, OpenSlideReader(at20) as r20:
        img40, img20 = render_tile(r40, f40), render_tile(r20, f20)
    assert img40.shape == img20.shape == (240, 320, 3)
    assert np.abs(img40.astype(int) - img20.astype(int)).mean() < 2.0, "the two renditions show the same tissue"


def test_boxes_map_back_to_the_same_slide_microns_at_40x_and_20x(scans, tmp_path):
    storage = LocalStorage(tmp_path)
    cells40 = [(400, 500, 48, 40), (700, 620, 24, 30)]
    f40 = fit_tile(_planned("s40", 320, 440, 640, 480, cells40, MPP_40X), 2.0, storage.task_uri)
    f20 = fit_tile(_planned("s20", 160, 220, 320, 240, [tuple(v // 2 for v in b) for b in cells40], MPP_20X),
                   1.0, storage.task_uri)
    for c40, c20 in zip(f40.cells, f20.cells):
        r40, r20 = cell_to_region(c40, f40, "A"), cell_to_region(c20, f20, "A")
        assert r40["value"]["x"] == pytest.approx(r20["value"]["x"])  # the same place on the same-size PNG
        assert r40["value"]["width"] == pytest.approx(r20["value"]["width"])
        assert region_to_slide_box(r40, f40) == (c40.x0, c40.y0, c40.w, c40.h)  # exact level-0 round trip
        assert region_to_slide_box(r20, f20) == (c20.x0, c20.y0, c20.w, c20.h)
    # a box an annotator draws by hand lands on the same micrometres of tissue in both scans
    drawn = {"value": {"x": 12.5, "y": 40.0, "width": 5.0, "height": 5.0}}
    um40 = np.array(region_to_slide_box(drawn, f40)) * MPP_40X
    um20 = np.array(region_to_slide_box(drawn, f20)) * MPP_20X
    np.testing.assert_allclose(um40, um20, atol=MPP_20X)


def test_downsampled_tiles_are_read_from_the_best_pyramid_level(tmp_path):
    # level 1 is deliberately not a downsample of level 0, so the pixels tell which level was read
    path = tmp_path / "marked.tiff"
    level0 = np.full((512, 512, 3), 200, np.uint8)
    level1 = np.full((256, 256, 3), (10, 120, 30), np.uint8)
    write_pyramidal_tiff([level0, level1], path, mpp=MPP_40X)
    with OpenSlideReader(path) as reader:
        assert reader.best_level(2.0) == (1, 2.0)
        assert reader.best_level(1.5)[0] == 0
        tile = fit_tile(_planned("s", 64, 64, 256, 256, [(100, 100, 10, 10)], MPP_40X), 2.0, str)
        rgb = render_tile(reader, tile)
    assert rgb.shape == (128, 128, 3)
    assert tuple(np.median(rgb.reshape(-1, 3), axis=0)) == (10, 120, 30)


def test_a_fractional_downsample_keeps_edges_where_the_geometry_says(tmp_path):
    # 0.3 um/px to 0.5 um/px: 5/3 level-0 px per tile px. A dark band starts at level-0 column 600.
    rgb = np.full((400, 1200, 3), 240, np.uint8)
    rgb[:, 600:] = 20
    path = tmp_path / "edge.png"
    Image.fromarray(rgb).save(path)
    with OpenSlideReader(path, mpp=0.3) as reader:
        tile = fit_tiles([_planned("s", 100, 50, 900, 300, [(610, 60, 20, 20)], 0.3)], 0.3, 0.5,
                         LocalStorage(tmp_path))[0]
        out = render_tile(reader, tile)
    assert (tile.width, tile.height) == (540, 180) and tile.downsample == pytest.approx(5 / 3)
    column = out[90, :, 0].astype(int)
    edge = int(np.argmax(column < 130))  # first tile column darker than the midpoint
    assert edge == pytest.approx((600 - 100) / tile.downsample, abs=1)


def test_write_tile_images_stores_pngs_once_and_skips_what_exists(scans, tmp_path):
    at40, _ = scans
    storage = LocalStorage(tmp_path)
    tiles = fit_tiles([_planned("s40", 0, 0, 256, 256, [(10, 10, 8, 8)], MPP_40X),
                       _planned("s40", 256, 0, 256, 256, [(300, 10, 8, 8)], MPP_40X, "t1")], MPP_40X, 0.5, storage)
    with OpenSlideReader(at40) as reader:
        assert write_tile_images(reader, tiles, storage) == 2
        first = storage.path(tile_key(tiles[0])).stat().st_mtime_ns
        assert write_tile_images(reader, tiles, storage) == 0
    assert storage.path(tile_key(tiles[0])).stat().st_mtime_ns == first
    with Image.open(storage.path(tile_key(tiles[1]))) as png:
        assert png.size == (tiles[1].width, tiles[1].height) == (128, 128)
    assert tiles[0].image == f"/data/local-files/?d={tile_key(tiles[0])}"
