"""Out-of-focus blocks: nuclei there are not offered (preprocess/nuclei/focus.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from preprocess.nuclei.focus import DEFAULT_MAX_BLUR, blur_scores, focus_checked, in_focus
from preprocess.nuclei.segment import Nuclei

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MPP = 0.5


def _tissue(size: int = 400, seed: int = 0) -> np.ndarray:
    """uint8 RGB at 0.5 um/px: pink stroma with fibre texture and sharp purple nuclei of 5-9 um."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.float64)
    img[:] = (230, 160, 195)
    img += rng.normal(0, 6, (size, size, 1))
    for _ in range(size * size // 400):
        r, c = rng.integers(0, size, 2)
        radius = rng.uniform(5, 9)
        disc = (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
        img[disc] = (80, 50, 140) + rng.normal(0, 8, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _blurred(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    return np.stack([ndi.gaussian_filter(rgb[..., c].astype(float), sigma_px) for c in range(3)], -1) \
        .round().astype(np.uint8)


def _right_half_blurred(sigma_um: float = 2.0) -> np.ndarray:
    rgb = _tissue()
    half = rgb.shape[1] // 2
    rgb[:, half:] = _blurred(rgb, sigma_um / MPP)[:, half:]
    return rgb


def test_sharp_tissue_passes_and_blurred_tissue_does_not():
    sharp, _, _ = blur_scores(_tissue(), MPP)
    blurred, _, _ = blur_scores(_blurred(_tissue(), 2.0 / MPP), MPP)
    assert sharp.shape == (4, 4)  # 200 um at 0.5 um/px in blocks of 50 um
    assert np.nanmax(sharp) < DEFAULT_MAX_BLUR < np.nanmin(blurred)


def test_only_the_nuclei_of_the_blurred_half_are_left_out():
    rgb = _right_half_blurred()
    xy = np.array([[50.0, 50.0], [150.0, 350.0], [250.0, 50.0], [390.0, 390.0]])  # (x, y): two left, two right
    assert in_focus(xy, rgb, MPP).tolist() == [True, True, False, False]
    assert in_focus(xy, rgb, MPP, max_blur=1.0).all()  # 1 turns the check off
    assert in_focus(np.zeros((0, 2)), rgb, MPP).shape == (0,)


def test_a_tissue_edge_in_white_background_is_not_judged():
    rgb = np.full((200, 200, 3), 250, np.uint8)
    rgb[:, 190:] = _tissue(200)[:, 190:]  # a 5 um sliver of tissue at the block's edge: sharp, but mostly white
    scores, _, _ = blur_scores(rgb, MPP)
    assert np.isnan(scores).all()
    assert in_focus(np.array([[195.0, 100.0]]), rgb, MPP).all()  # a block not judged keeps its nuclei


def test_blocks_are_the_same_tissue_at_20x_and_40x():
    rgb = _right_half_blurred()
    at_40x = np.asarray(Image.fromarray(rgb).resize((800, 800), Image.Resampling.BILINEAR))
    s20, rows20, cols20 = blur_scores(rgb, MPP)
    s40, rows40, cols40 = blur_scores(at_40x, MPP / 2)
    assert s20.shape == s40.shape and rows20[-1] == cols20[-1] == 400 and rows40[-1] == cols40[-1] == 800
    assert np.array_equal(s20 > DEFAULT_MAX_BLUR, s40 > DEFAULT_MAX_BLUR)
    # the 40x copy is an upsampled 20x image, softer than a real 40x scan: sharp blocks score ~0.09 higher
    assert np.nanmax(np.abs(s20 - s40)) < 0.1


def test_the_wrapped_segmenter_loses_only_the_blurred_nuclei():
    rgb = _right_half_blurred()
    found = Nuclei(np.array([[50.0, 60.0], [300.0, 60.0]]), np.array([[45, 55, 10, 10], [295, 55, 10, 10]], np.int32),
                   np.array([80, 80], np.int32))
    calls = []

    def segment(image: np.ndarray, mpp: float) -> Nuclei:
        calls.append((image.shape, mpp))
        return found

    checked = focus_checked(segment)
    kept = checked(rgb, MPP)
    assert kept.centroids_xy.tolist() == [[50.0, 60.0]] and kept.boxes.tolist() == [[45, 55, 10, 10]]
    assert checked.left_out == 1
    assert calls == [(rgb.shape, MPP)] and checked.__wrapped__ is segment
    assert focus_checked(segment, max_blur=1.0) is segment
    assert len(checked(rgb, MPP).take(np.zeros(1, bool))) == 0


@pytest.mark.skipif(not (SHARED / "consep_patches" / "images").is_dir(), reason="../shared/data/consep_patches absent")
def test_real_h_and_e_is_in_focus_until_it_is_blurred():
    """CoNSeP test patches (40x, 0.25 um/px): no block is out of focus; blurred by 1.5 um, most are."""
    paths = sorted((SHARED / "consep_patches" / "images").glob("test_*"))[:40]
    sharp, blurred = [], []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        s, _, _ = blur_scores(rgb, 0.25)
        b, _, _ = blur_scores(_blurred(rgb, 1.5 / 0.25), 0.25)
        sharp.extend(s[~np.isnan(s)])
        blurred.extend(b[~np.isnan(b)])
    assert len(sharp) >= 30 and max(sharp) < DEFAULT_MAX_BLUR  # a few patches are mostly lumen: not judged
    assert np.mean(np.array(blurred) > DEFAULT_MAX_BLUR) > 0.8


@pytest.mark.skipif(not (SHARED / "consep_patches" / "images").is_dir(), reason="../shared/data/consep_patches absent")
def test_preprocessing_offers_no_nucleus_of_an_out_of_focus_area(tmp_path):
    """A 768 x 768 px H&E slide at 40x (image 1 of CoNSeP test: its nine abutting patches) blurred
    by 2 um right of x = 256; one window segments it all, so the slide's edge lies in its blocks."""
    from adapters.slide_reader import OpenSlideReader
    from preprocess.layout import DataLayout
    from preprocess.settings import PreprocessSettings
    from preprocess.stages import merge_parts, plan_slide, process_region

    patches = [np.asarray(Image.open(SHARED / "consep_patches" / "images" / f"test_1_{k:03d}.jpg").convert("RGB"))
               for k in range(9)]  # the regular 3 x 3 grid, row by row
    rgb = np.vstack([np.hstack(patches[r * 3:r * 3 + 3]) for r in range(3)])
    rgb[:, 256:] = _blurred(rgb, 2.0 / 0.25)[:, 256:]
    path = tmp_path / "two-thirds-blurred.png"
    Image.fromarray(rgb).save(path)

    def cells_x(**overrides) -> np.ndarray:
        settings = PreprocessSettings(data_dir=tmp_path / str(overrides), ls_files_root=tmp_path / "files", mpp=0.25,
                                      window_px=1024, featurizer="handcrafted", progress=False, **overrides)
        with OpenSlideReader(path, mpp=0.25) as reader:
            plan = plan_slide(reader, settings, DataLayout(settings.data_dir, settings.ls_files_root))
            for region in plan.regions:
                process_region(reader, plan, region, settings)
            return merge_parts(reader, plan).centroids_xy[:, 0]

    checked, unchecked = cells_x(), cells_x(max_blur=1.0)
    # blocks of about 50 um (190 px here) from the read's origin at x = -92: those from x = 289 on are blurred
    assert (unchecked >= 300).sum() >= 50 and (checked >= 300).sum() <= 0.05 * (unchecked >= 300).sum()
    assert (checked < 90).sum() == (unchecked < 90).sum() > 20  # the sharp side keeps every nucleus
