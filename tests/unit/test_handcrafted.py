"""Handcrafted cell measurements: known answers on drawn discs, determinism, shapes, and the featurizer registry."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.errors import FeaturizerError
from preprocess.features.featurize import ResNet18Featurizer, make_featurizer
from preprocess.features.handcrafted import HandcraftedFeaturizer, feature_names

BLUE = (70, 60, 150)  # haematoxylin-stained nucleus
BROWN = (140, 90, 40)  # DAB-positive nucleus
BACKGROUND = (235, 215, 230)  # pale eosin


def _disc_patch(radius_px: float, colour: tuple[int, int, int], size_px: int = 40) -> np.ndarray:
    """uint8 (size, size, 3): a disc of ``colour`` centred on a pale pink background, with a little noise."""
    yy, xx = np.mgrid[:size_px, :size_px]
    inside = np.hypot(yy - (size_px - 1) / 2, xx - (size_px - 1) / 2) <= radius_px
    patch = np.where(inside[..., None], colour, BACKGROUND).astype(np.float64)
    patch += np.random.default_rng(0).normal(0, 3, patch.shape)
    return np.clip(patch, 0, 255).astype(np.uint8)


def _column(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, feature_names().index(name)]


@pytest.fixture(scope="module")
def featurizer() -> HandcraftedFeaturizer:
    return HandcraftedFeaturizer(patch_um=20.0)


def test_features_are_float32_n_by_dim(featurizer) -> None:
    patches = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    out = featurizer.embed(patches)
    assert out.shape == (5, featurizer.dim) and out.dtype == np.float32 and np.isfinite(out).all()
    assert featurizer.dim == len(feature_names()) and featurizer.name == "handcrafted"


def test_a_larger_disc_has_a_larger_area(featurizer) -> None:
    out = featurizer.embed(np.stack([_disc_patch(4, BLUE), _disc_patch(8, BLUE)]))
    small, large = _column(out, "area_um2")
    # 0.5 um per pixel: a radius-4 px disc is about pi * 2^2 = 12.6 um^2, a radius-8 one about 50 um^2.
    assert 8 < small < 18 and 40 < large < 60
    assert _column(out, "found").tolist() == [1.0, 1.0]
    assert (_column(out, "eccentricity") < 0.4).all() and (_column(out, "solidity") > 0.9).all()


def test_a_brown_disc_has_more_dab_than_a_blue_one(featurizer) -> None:
    out = featurizer.embed(np.stack([_disc_patch(6, BLUE), _disc_patch(6, BROWN)]))
    blue, brown = _column(out, "nucleus_dab_mean")
    assert brown > blue + 0.02
    blue_h, brown_h = _column(out, "nucleus_hematoxylin_mean")
    assert blue_h > brown_h


def test_a_blank_patch_finds_no_nucleus(featurizer) -> None:
    out = featurizer.embed(np.full((1, 40, 40, 3), 240, np.uint8))
    assert _column(out, "found")[0] == 0.0 and _column(out, "area_um2")[0] == 0.0 and np.isfinite(out).all()


def test_a_given_mask_replaces_the_segmented_one(featurizer) -> None:
    patch = _disc_patch(8, BLUE)[None]
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 18:22, 18:22] = True  # 16 px = 4 um^2
    assert _column(featurizer.embed(patch, nucleus_masks=mask), "area_um2")[0] == pytest.approx(4.0)


def test_features_are_deterministic_and_do_not_depend_on_the_batch(featurizer) -> None:
    patches = np.stack([_disc_patch(r, c) for r, c in [(3, BLUE), (6, BROWN), (9, BLUE)]])
    together = featurizer.embed(patches)
    one_by_one = np.concatenate([featurizer.embed(p[None]) for p in patches])
    np.testing.assert_array_equal(together, one_by_one)
    np.testing.assert_array_equal(together, HandcraftedFeaturizer(patch_um=20.0).embed(patches))


def test_bad_input_is_refused(featurizer) -> None:
    with pytest.raises(ValueError, match="uint8"):
        featurizer.embed(np.zeros((2, 40, 40, 3), np.float32))
    with pytest.raises(ValueError, match="nucleus_masks"):
        featurizer.embed(np.zeros((2, 40, 40, 3), np.uint8), nucleus_masks=np.zeros((2, 30, 30), bool))


def test_registry_builds_each_featurizer_by_name() -> None:
    assert isinstance(make_featurizer("handcrafted", patch_um=10.0), HandcraftedFeaturizer)
    assert isinstance(make_featurizer("resnet18"), ResNet18Featurizer)
    with pytest.raises(FeaturizerError, match="cellnet, handcrafted, resnet18, encoder"):
        make_featurizer("vit")


def test_default_featurizer_is_cellnet_unless_a_checkpoint_is_given(monkeypatch) -> None:
    from preprocess.settings import PreprocessSettings

    monkeypatch.delenv("HALI_FEATURIZER", raising=False)
    monkeypatch.delenv("HALI_CHECKPOINT", raising=False)
    assert PreprocessSettings().featurizer == "cellnet"
    assert PreprocessSettings(checkpoint="backbone.pt").featurizer == "resnet18"
    assert PreprocessSettings(checkpoint="backbone.pt", featurizer="handcrafted").featurizer == "handcrafted"
    monkeypatch.setenv("HALI_CHECKPOINT", "backbone.pt")
    monkeypatch.setenv("HALI_FEATURIZER", "handcrafted")
    assert PreprocessSettings().featurizer == "handcrafted"
