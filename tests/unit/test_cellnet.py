"""The ``cellnet`` featurizer: its weights and sidecar, the features it gives, and the trainer's pieces."""

import json

import numpy as np
import pytest
import torch

from preprocess.errors import FeaturizerError
from preprocess.features.cellnet import (
    DEFAULT_WEIGHTS,
    CellNet,
    CellNetFeaturizer,
    CellNetSpec,
    load_cellnet,
    weights_digest,
)
from preprocess.features.cellnet_train import CLASSES, augment, label_detections, save, to_input
from preprocess.features.featurize import make_featurizer, patch_um_of
from preprocess.settings import PreprocessSettings

SPEC = CellNetSpec(width=4, embed_dim=6, classes=CLASSES, patch_um=20.0, input_px=16,
                   mean=(0.7, 0.5, 0.7), std=(0.2, 0.2, 0.15))


def _weights(tmp_path, spec=SPEC, seed=0):
    torch.manual_seed(seed)
    out = tmp_path / "net.pt"
    save(CellNet(spec.width, spec.embed_dim, len(spec.classes)).eval(), spec, {"test": {"accuracy": 0.5}}, out,
         "python -m preprocess.features.cellnet_train --test")
    return out


def _patches(n, px=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def test_features_are_the_embedding_and_class_log_probabilities(tmp_path):
    featurizer = CellNetFeaturizer(_weights(tmp_path))
    assert (featurizer.dim, featurizer.patch_um, featurizer.patch_out_px) == (6 + 5, 20.0, 16)
    features = featurizer.embed(_patches(7))
    assert features.shape == (7, 11) and features.dtype == np.float32
    np.testing.assert_allclose(np.exp(features[:, 6:]).sum(1), 1.0, rtol=1e-5)
    # batching does not change a cell's features, and different cells differ
    np.testing.assert_allclose(CellNetFeaturizer(_weights(tmp_path), batch_size=2).embed(_patches(7)), features,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(features[0], features[1])


def test_the_sidecar_and_weights_round_trip_in_float16(tmp_path):
    path = _weights(tmp_path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["command"].startswith("python -m preprocess.features.cellnet_train")
    assert "CoNSeP" in sidecar["data"] and "non-commercial" in sidecar["licence"]
    assert all(v.dtype == torch.float16 for v in torch.load(path).values() if v.is_floating_point())
    model, spec = load_cellnet(path)
    assert spec == SPEC and not model.training


def test_a_missing_sidecar_names_the_file_and_the_trainer(tmp_path):
    path = _weights(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FeaturizerError, match=r"net\.json.*cellnet_train"):
        CellNetFeaturizer(path)


def test_weights_of_another_shape_are_refused(tmp_path):
    path = _weights(tmp_path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**sidecar, "width": 8}))
    with pytest.raises(FeaturizerError, match="do not fit the architecture"):
        CellNetFeaturizer(path)


def test_a_corrupt_weights_file_is_a_clear_error(tmp_path):
    path = _weights(tmp_path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(FeaturizerError, match="cellnet weights"):
        CellNetFeaturizer(path)


def test_patches_of_the_wrong_size_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, 16, 16, 3\)"):
        CellNetFeaturizer(_weights(tmp_path)).embed(_patches(2, px=20))


def test_the_digest_follows_the_weights_content(tmp_path):
    path = _weights(tmp_path)
    first = weights_digest(path)
    _weights(tmp_path, seed=1)
    assert weights_digest(path) != first
    assert weights_digest(tmp_path / "absent.pt") == "missing"


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="packaged cellnet weights not built")
def test_the_packaged_weights_are_the_default_featurizer():
    settings = PreprocessSettings()
    assert settings.featurizer == "cellnet"
    featurizer = make_featurizer(settings.featurizer)
    assert featurizer.spec.classes == CLASSES
    assert patch_um_of(featurizer, 99.0) == featurizer.spec.patch_um == 20.0
    sidecar = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert sidecar["test"]["n"] > 1000  # scored once on CoNSeP's test split


def test_patch_um_of_a_featurizer_without_its_own_is_the_setting():
    assert patch_um_of(object(), 24.0) == 24.0
    assert patch_um_of(make_featurizer("handcrafted", patch_um=30.0), 20.0) == 30.0


def test_detections_take_the_class_of_the_ground_truth_nucleus_within_reach():
    det = np.array([[0.0, 0.0], [10.0, 10.0], [50.0, 50.0]])
    gt = np.array([[1.0, 1.0], [13.0, 10.0], [100.0, 100.0]])
    got = label_detections(det, gt, np.array(["spindle", "inflammatory", "epithelial"]), max_dist_px=4.0)
    assert [CLASSES[k] for k in got] == ["spindle", "inflammatory", "not a nucleus"]
    assert [CLASSES[k] for k in label_detections(det, gt[:0], np.array([]), 4.0)] == ["not a nucleus"] * 3


def test_augmentation_keeps_the_pixels_and_jitter_stays_near_the_normalised_input():
    batch = _patches(3)
    out = augment(batch, np.random.default_rng(3))
    assert out.shape == batch.shape and sorted(out.ravel()) == sorted(batch.ravel())
    plain, jittered = to_input(batch, SPEC), to_input(batch, SPEC, np.random.default_rng(0))
    assert plain.shape == (3, 3, 16, 16)
    ratio = (jittered.std(dim=(2, 3)) / plain.std(dim=(2, 3))).numpy()
    assert ((ratio > 0.8) & (ratio < 1.2)).all() and not torch.allclose(plain, jittered)
