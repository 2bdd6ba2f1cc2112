"""Tissue detection on synthetic thumbnails (H&E, IHC, blank, all-tissue) and scikit-image's IHC image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from preprocess.nuclei.tissue import detect_tissue

WHITE = (255, 255, 255)
PINK = (230, 180, 210)
PURPLE = (80, 50, 150)
DAB_BROWN = (150, 100, 60)
HEMATOXYLIN_BLUE = (150, 160, 200)


def _page_with_blob(colour: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, truth): a 200x300 white page with noise and an elliptical blob of ``colour``."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((200, 300))
    truth = ((rows - 100) / 60.0) ** 2 + ((cols - 150) / 90.0) ** 2 <= 1.0
    rgb = np.empty((200, 300, 3), np.float64)
    rgb[:] = WHITE
    rgb[truth] = colour
    rgb += rng.normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_blank_white_thumbnail_has_no_tissue() -> None:
    assert not detect_tissue(np.full((64, 80, 3), 255, np.uint8)).any()


def test_noisy_white_page_has_no_tissue() -> None:
    rng = np.random.default_rng(1)
    page = rng.integers(243, 256, (120, 160, 3)).astype(np.uint8)
    assert not detect_tissue(page).any()


@pytest.mark.parametrize("colour", [PINK, PURPLE, DAB_BROWN, HEMATOXYLIN_BLUE], ids=["eosin", "he", "dab", "hema"])
def test_stained_blob_on_white_is_found(colour: tuple[int, int, int]) -> None:
    rgb, truth = _page_with_blob(colour)
    mask = detect_tissue(rgb)
    assert mask.shape == truth.shape and mask.dtype == bool
    assert _iou(mask, truth) > 0.95


def test_holes_in_tissue_are_filled() -> None:
    rgb, truth = _page_with_blob(PINK)
    rgb[95:105, 140:160] = 255
    assert _iou(detect_tissue(rgb), truth) > 0.95


def test_small_specks_are_not_tissue() -> None:
    rgb, truth = _page_with_blob(PINK)
    rgb[5:7, 5:7] = PURPLE
    assert not detect_tissue(rgb)[:20, :20].any()


def test_all_tissue_crop_is_all_tissue() -> None:
    rng = np.random.default_rng(2)
    rgb = np.empty((100, 100, 3), np.uint8)
    rgb[:] = PINK
    dots = rng.random((100, 100)) < 0.2
    rgb[dots] = PURPLE
    assert detect_tissue(rgb).mean() > 0.99


def test_ihc_crop_from_scikit_image_is_mostly_tissue() -> None:
    assert detect_tissue(data.immunohistochemistry()).mean() > 0.85
