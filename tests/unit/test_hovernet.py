"""HoVer-Net: architecture shapes, checkpoint layouts, HV post-processing, and the segmenter, with synthetic weights.

The network is big (ResNet-50 encoder at full resolution), so each model is built once per module and run
on the smallest inputs its crops allow (96 px fast, 198 px original).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.slide_reader import OpenSlideReader
from preprocess.errors import SegmenterWeightsError
from preprocess.nuclei.hovernet.model import MODES, HoVerNet
from preprocess.nuclei.hovernet.postprocess import hv_maps_from_labels, instance_types, instances_from_maps
from preprocess.nuclei.hovernet.segmenter import HoVerNetSegmenter, resolve_device
from preprocess.nuclei.hovernet.weights import infer_architecture, load_hovernet
from preprocess.nuclei.segment import Nuclei, segment_slide

torch.set_num_threads(1)


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial running statistics and biases, so equal outputs mean the buffers loaded too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def pannuke_like() -> HoVerNet:
    torch.manual_seed(0)
    return _randomise_batchnorm(HoVerNet("fast", n_types=6), seed=0)


@pytest.fixture(scope="module")
def pannuke_weights(pannuke_like: HoVerNet, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "hovernet_fast_pannuke_type.tar"
    torch.save({"desc": {f"module.{k}": v for k, v in pannuke_like.state_dict().items()}}, path)
    return path


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.fixture(scope="module")
def fast_output(pannuke_like: HoVerNet) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return pannuke_like(_image(96))


@pytest.fixture(scope="module")
def segmenter(pannuke_weights: Path) -> HoVerNetSegmenter:
    return HoVerNetSegmenter(pannuke_weights, device="cpu", patch_px=120)  # one patch for up to 28 px at 0.25 um/px


# --- architecture -----------------------------------------------------------------------------------------

def test_fast_mode_outputs_the_input_less_92_px_for_all_three_branches(fast_output) -> None:
    assert (MODES["fast"].input_px, MODES["fast"].output_px) == (256, 164)
    assert list(fast_output) == ["tp", "np", "hv"]
    assert [tuple(v.shape) for v in fast_output.values()] == [(1, 6, 4, 4), (1, 2, 4, 4), (1, 2, 4, 4)]


@pytest.mark.parametrize(("mode", "n_types", "input_px", "output_px"),
                         [("original", None, 270, 80), ("original", 5, 198, 8), ("fast", 6, 256, 164)])
def test_published_patch_geometry_holds_for_both_modes(mode, n_types, input_px, output_px) -> None:
    with torch.device("meta"):  # shapes only: the 270 px original forward takes seconds on a CPU
        out = HoVerNet(mode, n_types).eval()(torch.zeros(2, 3, input_px, input_px))
    heads = {"np": 2, "hv": 2} | ({"tp": n_types} if n_types else {})
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, output_px, output_px) for k, c in heads.items()}
    assert (MODES[mode].input_px - MODES[mode].output_px) == input_px - output_px


def test_module_names_are_those_of_the_reference_checkpoints() -> None:
    with torch.device("meta"):
        keys = set(HoVerNet("original", n_types=5).state_dict())
    for key in ("conv0./.weight", "d0.units.0.conv1.weight", "d0.units.1.preact/bn.running_var",
                "d3.shortcut.weight", "d3.blk_bna.bn.weight", "conv_bot.weight",
                "decoder.tp.u3.dense.units.7.preact_bna/bn.weight", "decoder.np.u2.dense.blk_bna.bn.bias",
                "decoder.hv.u1.conva.weight", "decoder.hv.u0.conv.bias", "upsample2x.unpool_mat"):
        assert key in keys, key
    assert "d0.units.0.preact/bn.weight" not in keys  # a stage's first unit is not pre-activated


# --- checkpoint layouts -----------------------------------------------------------------------------------

def _layout(state: dict[str, torch.Tensor], name: str) -> object:
    if name == "original-dataparallel":
        return {"desc": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"lr": torch.tensor(1e-4)}}
    if name == "original-tf-converted":  # convert_chkpt_tf2pytorch.py: no num_batches_tracked
        return {"desc": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}}
    if name == "tiatoolbox":
        return dict(state)
    if name == "state-dict-key":
        return {"state_dict": dict(state)}
    raise AssertionError(name)


@pytest.mark.parametrize("layout", ["original-dataparallel", "original-tf-converted", "tiatoolbox", "state-dict-key"])
def test_each_checkpoint_layout_loads_every_tensor(pannuke_like: HoVerNet, tmp_path: Path, layout: str) -> None:
    path = tmp_path / "weights.pth"
    torch.save(_layout(pannuke_like.state_dict(), layout), path)
    loaded = load_hovernet(path)
    assert (loaded.mode, loaded.n_types, loaded.training) == ("fast", 6, False)
    original = pannuke_like.state_dict()
    for key, value in loaded.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, original[key]), key


def test_loaded_checkpoint_gives_the_same_outputs(fast_output, segmenter: HoVerNetSegmenter) -> None:
    with torch.inference_mode():
        got = segmenter.model_(_image(96))  # loaded from the DataParallel {"desc": ...} layout
    for name in fast_output:
        torch.testing.assert_close(got[name], fast_output[name], rtol=0, atol=0)


@pytest.mark.parametrize(("mode", "n_types"), [("original", 5), ("fast", None)])
def test_mode_and_types_are_read_from_the_tensors(mode: str, n_types: int | None) -> None:
    with torch.device("meta"):
        state = HoVerNet(mode, n_types).state_dict()
    assert infer_architecture(state) == (mode, n_types)


def test_truncated_checkpoint_names_the_missing_keys(pannuke_like: HoVerNet, tmp_path: Path) -> None:
    state = pannuke_like.state_dict()
    del state["d2.units.3.conv2.weight"], state["decoder.hv.u0.conv.bias"]
    state["head.fc.weight"] = torch.zeros(3)
    path = tmp_path / "truncated.pth"
    torch.save({"desc": state}, path)
    with pytest.raises(SegmenterWeightsError) as error:
        load_hovernet(path)
    message = str(error.value)
    assert "2 missing keys" in message and "d2.units.3.conv2.weight" in message
    assert "decoder.hv.u0.conv.bias" in message and "head.fc.weight" in message
    assert "tiatoolbox" in message and "desc" in message  # says which layouts are accepted


def test_a_resnet_checkpoint_is_refused_with_the_keys_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, path)
    with pytest.raises(SegmenterWeightsError, match=r"missing keys, first \['conv0\./\.weight'"):
        load_hovernet(path)


def test_missing_or_non_tensor_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SegmenterWeightsError, match="does not exist"):
        load_hovernet(tmp_path / "nope.pth")
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SegmenterWeightsError, match="cannot read"):
        load_hovernet(path)
    torch.save({"desc": "no tensors here"}, path)
    with pytest.raises(SegmenterWeightsError, match="not a HoVer-Net state dict"):
        load_hovernet(path)


# --- post-processing --------------------------------------------------------------------------------------

def _nuclei_scene(shape: tuple[int, int] = (256, 256), n: int = 24, seed: int = 0) -> np.ndarray:
    """int32 instance map: ellipses 18-30 px across (5-8 um at 0.25 um/px), plus a touching pair."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for x, y in ((40, 40), (62, 40)):  # two 24 px discs whose centres are 22 px apart: a shared border
        labels[((cols - x) ** 2 + (rows - y) ** 2 <= 12**2) & (labels == 0)] = labels.max() + 1
    while labels.max() < n:
        r = rng.uniform(9, 15)
        x, y = rng.uniform(r + 2, shape[1] - r - 2), rng.uniform(r + 2, shape[0] - r - 2)
        theta, aspect = rng.uniform(0, np.pi), rng.uniform(0.7, 1.0)
        u = (cols - x) * np.cos(theta) + (rows - y) * np.sin(theta)
        v = -(cols - x) * np.sin(theta) + (rows - y) * np.cos(theta)
        inside = (u / r) ** 2 + (v / (aspect * r)) ** 2 <= 1
        if not labels[inside].any():
            labels[inside] = labels.max() + 1
    return labels


def _matched_fraction(truth: np.ndarray, found: np.ndarray) -> float:
    """Fraction of true instances whose most-overlapping found instance has IoU > 0.5."""
    matched = 0
    for index in range(1, truth.max() + 1):
        inside = truth == index
        ids, counts = np.unique(found[inside], return_counts=True)
        best = ids[counts.argmax()]
        if best and (inside & (found == best)).sum() / (inside | (found == best)).sum() > 0.5:
            matched += 1
    return matched / truth.max()


def test_ideal_maps_give_back_the_instances_including_a_touching_pair() -> None:
    truth = _nuclei_scene()
    rng = np.random.default_rng(1)
    np_prob = np.where(truth > 0, 0.9, 0.1) + rng.normal(0, 0.03, truth.shape)
    hv = hv_maps_from_labels(truth) + rng.normal(0, 0.05, (*truth.shape, 2))
    found = instances_from_maps(np_prob, hv)
    assert found.dtype == np.int32 and found.shape == truth.shape
    assert _matched_fraction(truth, found) >= 0.95
    assert found.max() == truth.max()
    pair = {int(found[40, 34]), int(found[40, 68])}
    assert len(pair) == 2 and 0 not in pair  # the touching discs come out as two nuclei


def test_hv_maps_run_from_minus_one_to_one_across_each_nucleus() -> None:
    labels = np.zeros((9, 9), np.int32)
    labels[2:7, 1:8] = 1
    hv = hv_maps_from_labels(labels)
    assert np.allclose(hv[4, 1:8, 0], [-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1])
    assert np.allclose(hv[2:7, 4, 1], [-1, -0.5, 0, 0.5, 1])
    assert not hv[labels == 0].any()


def test_empty_probability_map_gives_no_instances() -> None:
    assert not instances_from_maps(np.zeros((32, 32)), np.zeros((32, 32, 2))).any()


def test_each_instance_takes_its_majority_type_and_background_type_only_as_a_last_resort() -> None:
    labels = np.array([[1, 1, 1, 2, 2], [1, 1, 3, 3, 3]])
    types = np.array([[2, 2, 4, 0, 0], [0, 0, 0, 0, 5]])
    assert instance_types(labels, types).tolist() == [2, 0, 5]


# --- segmenter --------------------------------------------------------------------------------------------

class _CentreCrop(torch.nn.Module):
    """Stands in for HoVer-Net: "hv" is the centre of the input's red and green channels / 255."""

    def __init__(self, margin_px: int) -> None:
        super().__init__()
        self.margin_px = margin_px

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.margin_px
        centre = x[:, :, m:-m, m:-m] / 255.0
        return {"np": torch.zeros_like(centre[:, :2]), "hv": centre[:, :2]}


def test_patches_are_stitched_back_in_place(segmenter: HoVerNetSegmenter) -> None:
    segmenter = copy.copy(segmenter)
    segmenter.model_, segmenter.n_types_ = _CentreCrop(segmenter.margin_px), None
    segmenter.patch_px, segmenter.output_px, segmenter.batch_size = 112, 20, 3
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)  # 3 x 4 patches of 20 px
    np_prob, hv, tp = segmenter.predict_maps(rgb)
    assert np_prob.shape == (50, 70) and tp is None
    np.testing.assert_allclose(hv, rgb[..., :2] / 255.0, atol=1e-6)


def test_segmenter_rescales_to_40x_and_returns_labels_of_the_input_shape(segmenter: HoVerNetSegmenter) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)  # 24 x 28 px at 0.25 um/px
    labels, types = segmenter.label_and_type(rgb, mpp=0.5)
    assert labels.dtype == np.int32 and labels.shape == rgb.shape[:2]
    assert types is not None and types.shape == (labels.max(),)
    assert set(np.unique(labels)) == set(range(labels.max() + 1))


def test_segmenter_measures_its_label_map_into_nuclei(segmenter: HoVerNetSegmenter) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (24, 26, 3), dtype=np.uint8)
    nuclei = segmenter.segment_nuclei(rgb, mpp=0.25)
    assert isinstance(nuclei, Nuclei) and nuclei.boxes.dtype == np.int32
    assert ((nuclei.centroids_xy >= 0) & (nuclei.centroids_xy < 26)).all()


def test_auto_device_is_cuda_only_when_there_is_a_gpu() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


def test_slide_segmentation_uses_the_segmenter_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(path)
    calls = []

    def one_nucleus_in_the_middle(rgb: np.ndarray, mpp: float) -> Nuclei:
        calls.append((rgb.shape, mpp))
        rows, cols = rgb.shape[:2]
        return Nuclei(np.array([[cols / 2, rows / 2]]), np.array([[cols // 2 - 2, rows // 2 - 2, 5, 5]], np.int32),
                      np.array([25], np.int32))

    with OpenSlideReader(path, mpp=0.5) as reader:
        nuclei = segment_slide(reader, np.ones((2, 3), bool), 100.0, window_px=100, progress=False,
                               segment=one_nucleus_in_the_middle)
    assert len(calls) == 6 and all(mpp == 0.5 for _, mpp in calls)
    assert len(nuclei) == 6  # one per window, each in its own core
