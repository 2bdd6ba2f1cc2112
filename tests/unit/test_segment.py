"""Nucleus segmentation on synthetic H&E: dark-purple discs on pink tissue on a white page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from adapters.errors import SlideError
from adapters.slide_reader import OpenSlideReader
from preprocess.errors import SegmentationError
from preprocess.nuclei.segment import Nuclei, segment_nuclei, segment_slide
from preprocess.nuclei.tissue import detect_tissue

MPP = 0.5
RADIUS_PX = 8  # 4 um: a 50 um^2 nucleus at 0.5 um/px
PINK = (230, 180, 210)
PURPLE = (80, 50, 150)


def _draw(shape: tuple[int, int], centres_xy: np.ndarray, tissue: tuple[slice, slice], seed: int = 0) -> np.ndarray:
    """uint8 (rows, cols, 3): white page, pink ``tissue`` rectangle, purple discs at ``centres_xy``, mild noise."""
    rows, cols = np.indices(shape)
    rgb = np.full((*shape, 3), 255.0)
    rgb[tissue] = PINK
    for x, y in centres_xy:
        rgb[(cols - x) ** 2 + (rows - y) ** 2 <= RADIUS_PX**2] = PURPLE
    rgb += np.random.default_rng(seed).normal(0, 2, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _assert_matches(found_xy: np.ndarray, expected_xy: np.ndarray, tol_px: float = 2.0) -> None:
    assert len(found_xy) == len(expected_xy), f"found {len(found_xy)} nuclei, expected {len(expected_xy)}"
    distance = cdist(expected_xy, found_xy)
    assert (distance.min(axis=1) <= tol_px).all(), distance.min(axis=1)
    assert len(set(distance.argmin(axis=1))) == len(expected_xy)


# Six isolated discs plus a touching pair (centres 14 px apart, radii 8: they overlap).
DISCS_XY = np.array([[40, 40], [100, 50], [200, 45], [60, 150], [150, 160], [210, 200], [100, 220], [114, 220]], float)


def test_finds_each_disc_once_with_centroid_within_2px() -> None:
    rgb = _draw((256, 256), DISCS_XY, (slice(10, 246), slice(10, 246)))
    nuclei = segment_nuclei(rgb, MPP)
    _assert_matches(nuclei.centroids_xy, DISCS_XY)


def test_touching_discs_are_split_into_two_nuclei() -> None:
    pair = DISCS_XY[-2:]
    nuclei = segment_nuclei(_draw((80, 120), pair - (60, 180), (slice(0, 80), slice(0, 120))), MPP)
    _assert_matches(nuclei.centroids_xy, pair - (60, 180))


def test_boxes_and_areas_describe_each_disc() -> None:
    nuclei = segment_nuclei(_draw((100, 100), np.array([[50.0, 40.0]]), (slice(0, 100), slice(0, 100))), MPP)
    assert nuclei.boxes.dtype == np.int32 and nuclei.areas_px.dtype == np.int32
    x0, y0, w, h = nuclei.boxes[0]
    assert abs(x0 - (50 - RADIUS_PX)) <= 1 and abs(y0 - (40 - RADIUS_PX)) <= 1
    assert abs(w - (2 * RADIUS_PX + 1)) <= 2 and abs(h - (2 * RADIUS_PX + 1)) <= 2
    assert nuclei.areas_px[0] == pytest.approx(np.pi * RADIUS_PX**2, rel=0.15)


@pytest.mark.parametrize("colour", [(255, 255, 255), PINK], ids=["white", "pink"])
def test_image_without_nuclei_gives_none(colour: tuple[int, int, int]) -> None:
    rgb = np.clip(np.full((128, 128, 3), colour) + np.random.default_rng(3).normal(0, 2, (128, 128, 3)), 0, 255)
    assert len(segment_nuclei(rgb.astype(np.uint8), MPP)) == 0


def test_size_limits_follow_mpp() -> None:
    rgb = _draw((100, 100), np.array([[50.0, 50.0]]), (slice(0, 100), slice(0, 100)))
    # 201 px: 50 um^2 at 0.5 um/px, 2 um^2 (too small) at 0.1, 804 um^2 (too large) at 2.0.
    assert len(segment_nuclei(rgb, 0.5)) == 1
    assert len(segment_nuclei(rgb, 0.1)) == 0
    assert len(segment_nuclei(rgb, 2.0)) == 0


def test_bad_input_raises_segmentation_error() -> None:
    with pytest.raises(SegmentationError, match="uint8"):
        segment_nuclei(np.zeros((10, 10), np.uint8), MPP)
    with pytest.raises(SegmentationError, match="mpp"):
        segment_nuclei(np.zeros((10, 10, 3), np.uint8), 0.0)


# Window boundaries at x = 128, 256 and y = 128: discs are centred on or just beside them.
SLIDE_DISCS_XY = np.array(
    [[128, 60], [125, 128], [131, 128], [256, 200], [250, 128], [40, 128], [300, 40], [200, 250], [70, 200]], float
)
SLIDE_DISCS_XY[2, 0] += 12  # the [125, 128] / [143, 128] pair touches, across the x = 128 boundary


@pytest.fixture
def disc_slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "discs.png"
    Image.fromarray(_draw((300, 360), SLIDE_DISCS_XY, (slice(10, 290), slice(10, 340)))).save(path)
    return path, SLIDE_DISCS_XY


def _slide_mask(reader: OpenSlideReader) -> tuple[np.ndarray, float]:
    thumb, downsample = reader.thumbnail(90)
    return detect_tissue(thumb), downsample


def test_windowed_segmentation_returns_discs_on_window_borders_exactly_once(disc_slide) -> None:
    path, expected = disc_slide
    with OpenSlideReader(path, mpp=MPP) as reader:
        mask, downsample = _slide_mask(reader)
        nuclei = segment_slide(reader, mask, downsample, window_px=128, progress=False)
    _assert_matches(nuclei.centroids_xy, expected)


def test_windowed_segmentation_is_sorted_by_row_then_column(disc_slide) -> None:
    path, _ = disc_slide
    with OpenSlideReader(path, mpp=MPP) as reader:
        mask, downsample = _slide_mask(reader)
        nuclei = segment_slide(reader, mask, downsample, window_px=128, progress=False)
    keys = list(zip(nuclei.centroids_xy[:, 1], nuclei.centroids_xy[:, 0]))
    assert keys == sorted(keys)


def test_nuclei_off_the_tissue_mask_are_dropped(disc_slide) -> None:
    path, expected = disc_slide
    with OpenSlideReader(path, mpp=MPP) as reader:
        mask, downsample = _slide_mask(reader)
        left_only = mask.copy()
        left_only[:, int(200 / downsample) :] = False
        nuclei = segment_slide(reader, left_only, downsample, window_px=128, progress=False)
    assert len(nuclei) > 0 and (nuclei.centroids_xy[:, 0] < 200 + 2 * downsample).all()
    assert len(nuclei) < len(expected)


def test_no_tissue_means_no_windows_and_no_nuclei(disc_slide) -> None:
    path, _ = disc_slide
    with OpenSlideReader(path, mpp=MPP) as reader:
        mask, downsample = _slide_mask(reader)
        nuclei = segment_slide(reader, np.zeros_like(mask), downsample, progress=False)
    assert isinstance(nuclei, Nuclei) and len(nuclei) == 0 and nuclei.centroids_xy.shape == (0, 2)


def test_slide_segmentation_needs_mpp_and_a_matching_mask(disc_slide) -> None:
    path, _ = disc_slide
    with OpenSlideReader(path) as reader, pytest.raises(SlideError, match="--mpp"):
        segment_slide(reader, np.ones((3, 4), bool), 90.0, progress=False)
    with OpenSlideReader(path, mpp=MPP) as reader, pytest.raises(SegmentationError, match="tissue mask"):
        segment_slide(reader, np.ones((30, 40), bool), 90.0, progress=False)


def test_dab_brown_nucleus_is_found_as_well_as_a_haematoxylin_blue_one() -> None:
    """Ki-67 IHC: a brown DAB-positive nucleus and a pale-blue negative one, both on an off-white background."""
    rows, cols = np.indices((100, 160))
    rgb = np.full((100, 160, 3), (235.0, 230.0, 220.0))
    centres_xy = np.array([[45.0, 50.0], [115.0, 50.0]])
    for (x, y), colour in zip(centres_xy, [(95, 55, 25), (130, 150, 200)]):
        rgb[(cols - x) ** 2 + (rows - y) ** 2 <= RADIUS_PX**2] = colour
    rgb += np.random.default_rng(5).normal(0, 2, rgb.shape)
    nuclei = segment_nuclei(np.clip(rgb, 0, 255).astype(np.uint8), MPP)
    _assert_matches(nuclei.centroids_xy, centres_xy)
