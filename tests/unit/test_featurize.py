"""Cell patches and ResNet-18 embeddings: shapes, determinism, checkpoint formats and errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from adapters.slide_reader import OpenSlideReader
from preprocess.errors import FeaturizerError
from preprocess.features.featurize import ResNet18Featurizer, cell_patch_px, extract_patches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def random_featurizer() -> ResNet18Featurizer:
    return ResNet18Featurizer(batch_size=4)


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    """A resnet18 state_dict unlike the seeded random init (seed 123), fc included as in torchvision."""
    torch.manual_seed(123)
    return resnet18(weights=None).state_dict()


@pytest.fixture
def slide(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb = np.random.default_rng(1).integers(0, 256, (700, 1500, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_embeddings_are_float32_n_by_512(random_featurizer: ResNet18Featurizer, patches: np.ndarray) -> None:
    out = random_featurizer.embed(patches)
    assert out.shape == (6, 512) and out.dtype == np.float32 and np.isfinite(out).all()
    assert random_featurizer.dim == 512 and random_featurizer.name == "resnet18:random-init"


def test_random_init_is_the_same_in_two_featurizers(random_featurizer, patches) -> None:
    torch.manual_seed(999)  # the caller's global seed must not matter
    again = ResNet18Featurizer(batch_size=5)
    np.testing.assert_allclose(again.embed(patches), random_featurizer.embed(patches), rtol=1e-5, atol=1e-6)


def test_batching_does_not_change_embeddings(random_featurizer, patches) -> None:
    one_by_one = np.concatenate([random_featurizer.embed(patches[i : i + 1]) for i in range(len(patches))])
    np.testing.assert_allclose(one_by_one, random_featurizer.embed(patches), rtol=1e-4, atol=1e-5)


def test_no_checkpoint_warns_that_weights_are_random(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="preprocess.features.featurize"):
        ResNet18Featurizer()
    assert "RANDOM weights" in caplog.text and "--checkpoint" in caplog.text


@pytest.fixture(scope="module")
def trained_embedding(trained_state, patches) -> np.ndarray:
    """Embeddings of ``patches`` by ``trained_state``, computed with torchvision directly."""
    return _reference_embedding(trained_state, patches)


def _reference_embedding(state: dict[str, torch.Tensor], patches: np.ndarray) -> np.ndarray:
    model = resnet18(weights=None)
    model.load_state_dict(state)
    model.fc = nn.Identity()
    model.eval()
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.inference_mode():
        return model(x).numpy()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {"model": {f"backbone.{k}": v for k, v in s.items() if not k.startswith("fc.")}, "epoch": 3},
        lambda s: {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")},
    ],
    ids=["plain", "state_dict-module", "model-backbone-no-fc", "no-batch-counters"],
)
def test_checkpoint_formats_load_the_same_weights(
    tmp_path: Path, trained_state, trained_embedding, patches, wrap
) -> None:
    path = tmp_path / "backbone.pt"
    torch.save(wrap(trained_state), path)
    featurizer = ResNet18Featurizer(checkpoint=path)
    assert featurizer.name == "resnet18:backbone.pt"
    np.testing.assert_allclose(featurizer.embed(patches), trained_embedding, rtol=1e-4, atol=1e-5)


def test_checkpoint_of_another_layout_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"encoder.conv.weight": torch.zeros(3), "head.bias": torch.zeros(2)}, path)
    with pytest.raises(FeaturizerError, match="missing keys") as info:
        ResNet18Featurizer(checkpoint=path)
    assert "conv1.weight" in str(info.value) and "encoder.conv.weight" in str(info.value)


def test_checkpoint_with_wrong_shapes_is_rejected(tmp_path: Path, trained_state) -> None:
    bad = dict(trained_state)
    bad["conv1.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "shapes.pt"
    torch.save(bad, path)
    with pytest.raises(FeaturizerError, match="wrong shape.*conv1.weight"):
        ResNet18Featurizer(checkpoint=path)


def test_missing_or_pickled_checkpoint_raises_featurizer_error(tmp_path: Path) -> None:
    with pytest.raises(FeaturizerError, match="does not exist"):
        ResNet18Featurizer(checkpoint=tmp_path / "absent.pt")
    pickled = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), pickled)  # a whole module: refused by weights_only loading
    with pytest.raises(FeaturizerError, match="weights-only"):
        ResNet18Featurizer(checkpoint=pickled)


def test_cell_patch_px_scales_with_mpp() -> None:
    assert cell_patch_px(0.5) == 40
    assert cell_patch_px(0.25) == 80
    assert cell_patch_px(None) == 40
    assert cell_patch_px(None, default_px=64) == 64


def test_patches_equal_single_reads_around_each_centroid(slide) -> None:
    path, rgb = slide
    xy = np.array([[100.2, 50.7], [1200.0, 600.0], [1030.5, 20.0], [700.0, 350.0]])
    with OpenSlideReader(path) as reader:
        patches = extract_patches(reader, xy, patch_px=40, out_px=40)
    assert patches.shape == (4, 40, 40, 3) and patches.dtype == np.uint8
    for patch, (x, y) in zip(patches, np.floor(xy + 0.5).astype(int)):
        np.testing.assert_array_equal(patch, rgb[y - 20 : y + 20, x - 20 : x + 20])


def test_patches_past_the_slide_edge_are_white_and_resized(slide) -> None:
    path, rgb = slide
    with OpenSlideReader(path) as reader:
        patches = extract_patches(reader, np.array([[0.0, 0.0], [10.0, 10.0]]), patch_px=80, out_px=40)
    assert patches.shape == (2, 40, 40, 3)
    assert (patches[0, :19, :19] == 255).all()
    assert not (patches[0, 21:, 21:] == 255).all()


def test_no_centroids_give_no_patches(slide) -> None:
    path, _ = slide
    with OpenSlideReader(path) as reader:
        assert extract_patches(reader, np.zeros((0, 2)), patch_px=40).shape == (0, 40, 40, 3)
