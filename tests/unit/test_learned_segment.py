"""The learned nucleus segmenter (packaged CoNSeP U-Net): output contract, synthetic H&E, artefact filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

from preprocess.errors import SegmentationError
from preprocess.nuclei.learned import (
    DEFAULT_WEIGHTS,
    Postprocess,
    artefact_mask,
    label_nuclei_learned,
    labels_from_maps,
    segment_nuclei_learned,
)
from preprocess.nuclei.segment import label_nuclei

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MPP = 0.5
RADIUS_PX = 7  # 3.5 um: a 38 um^2 nucleus at 0.5 um/px
PINK = (235, 170, 205)
PURPLE = (90, 55, 145)
BLACK = (25, 25, 25)
DISCS_XY = np.array([[30, 30], [90, 40], [150, 35], [40, 100], [110, 110], [170, 150], [60, 170]], float)
CONSEP = Path(__file__).resolve().parents[3] / "shared" / "data" / "consep_patches"


def _draw(shape: tuple[int, int], discs: list[tuple[float, float, tuple[int, int, int]]], seed: int = 0) -> np.ndarray:
    """uint8 (rows, cols, 3): pink tissue with soft-edged discs of the given (x, y, colour), mild noise."""
    rows, cols = np.indices(shape)
    rgb = np.empty((*shape, 3))
    rgb[:] = PINK
    for x, y, colour in discs:
        weight = np.clip(RADIUS_PX + 0.5 - np.hypot(cols - x, rows - y), 0, 1)[..., None]
        rgb = rgb * (1 - weight) + np.array(colour) * weight
    rgb += np.random.default_rng(seed).normal(0, 3, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _purple_discs(shape: tuple[int, int] = (200, 200)) -> np.ndarray:
    return _draw(shape, [(x, y, PURPLE) for x, y in DISCS_XY])


def _centroids(labels: np.ndarray) -> np.ndarray:
    from preprocess.nuclei.metrics import label_centroids

    return label_centroids(labels)


def test_weights_ship_small_with_their_sidecar() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    assert DEFAULT_WEIGHTS.with_suffix(".json").is_file()


def test_instance_map_is_int32_numbered_from_one_without_gaps() -> None:
    labels = label_nuclei_learned(_purple_discs(), MPP)
    assert labels.shape == (200, 200) and labels.dtype == np.int32
    ids = np.unique(labels)
    assert ids[0] == 0 and list(ids[1:]) == list(range(1, len(ids)))


def test_finds_each_dark_disc_on_pink_once() -> None:
    found = _centroids(label_nuclei_learned(_purple_discs(), MPP))
    assert abs(len(found) - len(DISCS_XY)) <= 1, f"found {len(found)} nuclei, drew {len(DISCS_XY)}"
    distance = cdist(DISCS_XY, found)
    assert (distance.min(axis=1) <= 3).sum() >= len(DISCS_XY) - 1, distance.min(axis=1)


def test_blank_and_white_images_have_no_nuclei() -> None:
    white = np.full((128, 160, 3), 245, np.uint8)
    pink = _draw((128, 160), [])
    assert label_nuclei_learned(white, MPP).max() == 0
    assert label_nuclei_learned(pink, MPP).max() == 0


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (129, 67)])
def test_any_image_size_gives_a_map_of_that_size(shape: tuple[int, int]) -> None:
    rgb = _draw(shape, [(shape[1] / 2, shape[0] / 2, PURPLE)])
    assert label_nuclei_learned(rgb, MPP).shape == shape


def test_40x_input_is_resampled_and_gives_the_same_nuclei() -> None:
    at_20x = _purple_discs()
    at_40x = np.asarray(Image.fromarray(at_20x).resize((400, 400), Image.BILINEAR))
    found = _centroids(label_nuclei_learned(at_40x, MPP / 2)) / 2
    assert abs(len(found) - len(DISCS_XY)) <= 1
    assert (cdist(DISCS_XY, found).min(axis=1) <= 3).sum() >= len(DISCS_XY) - 1


def test_segment_nuclei_learned_measures_the_instance_map() -> None:
    rgb = _purple_discs()
    nuclei = segment_nuclei_learned(rgb, MPP)
    assert len(nuclei) == label_nuclei_learned(rgb, MPP).max()
    assert nuclei.boxes.dtype == np.int32 and nuclei.areas_px.dtype == np.int32


@pytest.mark.parametrize("bad", [np.zeros((32, 32, 3), np.float32), np.zeros((32, 32), np.uint8),
                                 np.zeros((32, 32, 4), np.uint8)])
def test_bad_input_raises_the_classical_segmenters_error(bad: np.ndarray) -> None:
    for segment in (label_nuclei, label_nuclei_learned):
        with pytest.raises(SegmentationError, match="uint8 \\(rows, cols, 3\\)"):
            segment(bad, MPP)
    with pytest.raises(SegmentationError, match="mpp"):
        label_nuclei_learned(_purple_discs(), 0.0)


def test_artefact_colours_are_flagged_and_nuclear_ones_kept() -> None:
    mean_rgb = np.array([PURPLE, (120, 80, 160), (95, 60, 40), (15, 12, 50),  # H, pale H, dark DAB, navy H
                         BLACK, (40, 90, 170), (60, 140, 70)], float)  # pigment, blue dye, green ink
    assert artefact_mask(mean_rgb).tolist() == [False, False, False, False, True, True, True]


def test_black_blob_found_by_the_maps_is_dropped() -> None:
    rgb = _draw((60, 100), [(25, 30, PURPLE), (75, 30, BLACK)])
    rows, cols = np.indices(rgb.shape[:2])
    distance = np.zeros(rgb.shape[:2], np.float32)
    for x in (25, 75):
        distance = np.maximum(distance, np.clip(1 - np.hypot(cols - x, rows - 30) / RADIUS_PX, 0, 1))
    labels = labels_from_maps((distance > 0).astype(np.float32), distance, rgb, MPP, Postprocess())
    assert labels.max() == 1 and labels[30, 25] == 1 and labels[30, 75] == 0


def _two_touching_nuclei_maps() -> tuple[np.ndarray, np.ndarray]:
    """(foreground prob, distance), float32 (40, 60): two touching discs 12 px apart whose blurred distance
    map dips only to 0.61 between their peaks, as the U-Net's does on a tight pair."""
    rows, cols = np.indices((40, 60))
    r1, r2 = np.hypot(cols - 24, rows - 20), np.hypot(cols - 36, rows - 20)
    foreground = ((r1 <= 9) | (r2 <= 9)).astype(np.float32)
    distance = np.maximum(np.exp(-(r1**2) / 72), np.exp(-(r2**2) / 72)) * foreground
    return foreground, distance.astype(np.float32)


def test_h_maxima_markers_split_two_touching_nuclei_that_a_core_threshold_merges() -> None:
    foreground, distance = _two_touching_nuclei_maps()
    rgb = _draw((40, 60), [(24, 20, PURPLE), (36, 20, PURPLE)])
    merged = labels_from_maps(foreground, distance, rgb, MPP, Postprocess(foreground=0.5, core=0.5))
    split = labels_from_maps(foreground, distance, rgb, MPP, Postprocess(foreground=0.5, core=0.2, marker_h=0.1))
    assert merged.max() == 1
    assert split.max() == 2 and split[20, 24] != split[20, 36]
    assert np.allclose(_centroids(split), [[23.6, 20], [36.4, 20]], atol=1.0)


def test_h_maxima_markers_keep_a_bumpy_large_nucleus_whole() -> None:
    rows, cols = np.indices((60, 60))
    radius = np.hypot(cols - 30, rows - 30)
    foreground = (radius <= 20).astype(np.float32)
    ripple = 0.04 * np.sin(cols / 2.0) * np.sin(rows / 2.0)  # shallow lobes, below marker_h
    distance = (np.clip(1 - radius / 20, 0, 1) * 0.9 + ripple * foreground).astype(np.float32)
    rgb = _draw((60, 60), [])
    labels = labels_from_maps(foreground, distance, rgb, MPP, Postprocess(foreground=0.5, core=0.2, marker_h=0.1))
    assert labels.max() == 1


def test_black_pigment_is_not_a_nucleus_end_to_end() -> None:
    rgb = _draw((200, 200), [(x, y, PURPLE) for x, y in DISCS_XY[:4]] + [(150, 150, BLACK), (160, 60, BLACK)])
    found = _centroids(label_nuclei_learned(rgb, MPP))
    assert cdist(np.array([[150.0, 150.0], [160.0, 60.0]]), found).min() > RADIUS_PX


@pytest.mark.skipif(not CONSEP.is_dir(), reason=f"no CoNSeP patches at {CONSEP}")
def test_finds_most_nuclei_of_a_consep_test_patch() -> None:
    from preprocess.nuclei.metrics import precision_recall_f1, score_instances

    npz = np.load(CONSEP / "inst_maps_test.npz")
    name, truth = str(npz["names"][5]), npz["inst"][5].astype(np.int32)
    rgb = np.asarray(Image.open(CONSEP / "images" / f"{name}.jpg").convert("RGB"))
    score = score_instances(truth, label_nuclei_learned(rgb, 0.25))
    assert precision_recall_f1(score.tp, score.fp, score.fn)[2] > 0.6


def test_fused_batchnorm_gives_the_same_outputs() -> None:
    import torch

    from preprocess.nuclei.unet import NucleusUNet

    torch.manual_seed(0)
    model = NucleusUNet((8, 16))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        before = model.eval()(x)
        after = model.fuse_batchnorm()(x)
    assert torch.allclose(before, after, atol=1e-5)


def test_distance_target_is_one_at_each_nucleus_centre_and_zero_outside() -> None:
    from preprocess.nuclei.learned_train import distance_target

    rows, cols = np.indices((40, 60))
    inst = np.zeros((40, 60), np.int32)
    inst[np.hypot(cols - 15, rows - 20) <= 8] = 1
    inst[np.hypot(cols - 40, rows - 20) <= 4] = 2  # a small nucleus peaks at 1 too
    target = distance_target(inst)
    assert target[20, 15] == pytest.approx(1.0) and target[20, 40] == pytest.approx(1.0)
    assert target[inst == 0].max() == 0 and target[inst > 0].min() > 0


def test_hed_jitter_without_strength_returns_the_image() -> None:
    from preprocess.nuclei.learned_train import hed_jitter

    rgb = _purple_discs((32, 32))
    same = hed_jitter(rgb, np.random.default_rng(0), strength=0.0)
    assert np.abs(same * 255 - rgb).max() < 1.5
