"""The pluggable encoder: any torchvision or timm backbone, weights from a local file, classifier removed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from preprocess.errors import FeaturizerError
from preprocess.features.encoder import EncoderFeaturizer, build_encoder
from preprocess.features.featurize import make_featurizer
from preprocess.settings import PreprocessSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RNG = np.random.default_rng(0)
PATCHES = RNG.integers(0, 255, size=(3, 40, 40, 3), dtype=np.uint8)


def _saved(model: torch.nn.Module, path, wrap: str | None = None, prefix: str = ""):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({wrap: state} if wrap else state, path)
    return path


def _reference(model: torch.nn.Module, patches: np.ndarray, px: int) -> np.ndarray:
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(px, px), mode="bilinear", align_corners=False)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.inference_mode():
        return model.eval()((x - mean) / std).numpy()


def test_a_torchvision_backbone_from_a_local_file_gives_its_pooled_features(tmp_path):
    torch.manual_seed(1)
    trained = torchvision.models.mobilenet_v3_small(num_classes=7)  # a "lab's" weights, head included
    path = _saved(trained, tmp_path / "mnv3.pt", wrap="state_dict", prefix="module.")
    enc = make_featurizer("encoder", path, encoder="torchvision:mobilenet_v3_small", encoder_input_px=64)
    trained.classifier[-1] = torch.nn.Identity()
    assert enc.dim == 1024 and enc.patch_out_px == 64 and enc.name == "encoder:torchvision:mobilenet_v3_small:mnv3.pt"
    np.testing.assert_allclose(enc.embed(PATCHES), _reference(trained, PATCHES, 64), rtol=1e-4, atol=1e-5)


def test_a_timm_backbone_from_a_local_file_gives_its_pooled_features(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is the optional extra 'encoders'")
    torch.manual_seed(2)
    trained = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    path = _saved(trained, tmp_path / "r10t.pth")
    (tmp_path / "r10t.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    enc = EncoderFeaturizer("timm:resnet10t", path, input_px=32)
    trained.reset_classifier(0)
    x = torch.from_numpy(PATCHES).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        expected = trained.eval()((x - 0.5) / 0.25).numpy()
    np.testing.assert_allclose(enc.embed(PATCHES), expected, rtol=1e-4, atol=1e-5)


def test_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    path = _saved(torchvision.models.resnet18(), tmp_path / "r18.pt")
    with pytest.raises(FeaturizerError, match=r"does not fit torchvision:mobilenet_v3_small: \d+ missing keys"):
        EncoderFeaturizer("torchvision:mobilenet_v3_small", path)


@pytest.mark.parametrize("spec, message", [
    ("vit_small", "must be <source>:<architecture>"),
    ("torchvision:no_such_net", "torchvision has no architecture 'no_such_net'"),
])
def test_a_bad_encoder_name_says_how_to_write_it(spec, message):
    with pytest.raises(FeaturizerError, match=message):
        build_encoder(spec)


def test_an_encoder_without_weights_is_refused_at_settings_time():
    with pytest.raises(ValueError, match="needs HALI_ENCODER .* and HALI_CHECKPOINT"):
        PreprocessSettings(featurizer="encoder", encoder="timm:resnet10t")
    with pytest.raises(FeaturizerError, match="needs its weights"):
        EncoderFeaturizer("timm:resnet10t", None)


def test_an_encoder_with_a_checkpoint_is_the_featurizer_by_default(tmp_path):
    s = PreprocessSettings(encoder="torchvision:resnet18", checkpoint=tmp_path / "w.pt")
    assert s.featurizer == "encoder"
