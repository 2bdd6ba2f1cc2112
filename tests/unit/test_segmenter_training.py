"""``hali train-segmenter``: mask readers, HoVer-Net targets and losses, the training loop, and its checkpoint
loading through the same loader as ``hali preprocess --segmenter-weights``.

The overfit and phase tests use a small stand-in network (``TinyHoVer``: a few valid 3x3 convolutions with
HoVer-Net's module names, outputs and geometry) because the full HoVer-Net takes seconds per step on a
CPU; the full network is trained for one step in the save/load test.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ml_backend.cli import main
from preprocess.errors import SegmenterTrainingError
from preprocess.nuclei.hovernet import HoVerNetSegmenter
from preprocess.nuclei.hovernet.datasets import (
    ConsepPatches,
    MaskSample,
    PanNukeFolds,
    instances_from_type_channels,
    load_mask_dataset,
    split_by_source,
)
from preprocess.nuclei.hovernet.losses import dice_loss, hovernet_loss, hv_gradients, msge_loss
from preprocess.nuclei.hovernet.model import HoVerNet, ModeSpec
from preprocess.nuclei.hovernet.targets import augment, make_patch
from preprocess.nuclei.hovernet.train import (
    ENCODER_MODULES,
    SegmenterTrainer,
    TrainConfig,
    build_model,
    run_train_segmenter,
)

BACKGROUND_RGB = (225, 190, 215)  # pale pink: H&E background
NUCLEUS_RGB = (70, 40, 120)  # dark purple: haematoxylin


def _disks(size: int, centres_radii: list[tuple[float, float, float]]) -> np.ndarray:
    """int32 (size, size) instance map of disks (x, y, r), ids 1.. in order; later disks do not overwrite."""
    rows, cols = np.indices((size, size))
    inst = np.zeros((size, size), np.int32)
    for index, (x, y, r) in enumerate(centres_radii, start=1):
        inst[((cols - x) ** 2 + (rows - y) ** 2 <= r * r) & (inst == 0)] = index
    return inst


def _scene(size: int = 256, n: int = 12, seed: int = 0) -> MaskSample:
    """Up to ``n`` random separate disks of radius 6-11 px (nuclei at 40x) drawn dark on pale noise; types 1..3."""
    rng = np.random.default_rng(seed)
    disks: list[tuple[float, float, float]] = []
    for _ in range(2000):  # a small image holds fewer than n
        if len(disks) == n:
            break
        r = rng.uniform(6, 11)
        x, y = rng.uniform(r, size - r, 2)
        if all((x - a) ** 2 + (y - b) ** 2 > (r + c + 2) ** 2 for a, b, c in disks):
            disks.append((x, y, r))
    inst = _disks(size, disks)
    rgb = np.where(inst[..., None] > 0, NUCLEUS_RGB, BACKGROUND_RGB) + rng.normal(0, 8, (size, size, 3))
    types = np.where(inst > 0, inst % 3 + 1, 0).astype(np.int32)
    return MaskSample(f"scene{seed}", np.clip(rgb, 0, 255).astype(np.uint8), inst, types, f"src{seed}")


def _write_pannuke(root: Path, n: int = 2, size: int = 256) -> Path:
    """A PanNuke-format fold of ``n`` synthetic images (float64 arrays, as PanNuke ships them)."""
    root.mkdir(parents=True, exist_ok=True)
    scenes = [_scene(size, seed=i) for i in range(n)]
    masks = np.zeros((n, size, size, 6))
    masks[..., 5] = 1
    for i, s in enumerate(scenes):
        for t in (1, 2, 3):
            masks[i, :, :, t - 1] = np.where(s.types == t, s.inst, 0)
        masks[i, :, :, 5] = s.inst == 0
    np.save(root / "images.npy", np.stack([s.rgb for s in scenes]).astype(np.float64))
    np.save(root / "masks.npy", masks)
    np.save(root / "types.npy", np.array(["Colon"] * n))
    return root


def _write_consep(root: Path, names: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    scenes = [_scene(seed=i) for i in range(len(names))]
    for name, s in zip(names, scenes):
        Image.fromarray(s.rgb).save(root / "images" / f"{name}.png")
    np.savez(root / "inst_maps_train.npz", names=np.array(names), inst=np.stack([s.inst for s in scenes]).astype(
        np.uint16))
    lines = ["patch,split,inst_id,type_id,type_name,cx,cy"]
    for name, s in zip(names, scenes):
        for k in range(1, s.inst.max() + 1):
            t = int(s.types[s.inst == k][0])
            lines.append(f"{name},train,{k},{t},kind{t},0,0")
    (root / "nuclei.csv").write_text("\n".join(lines) + "\n")
    return root


# --- targets ------------------------------------------------------------------------------------------------

def test_hv_target_of_a_disk_is_antisymmetric_zero_at_its_centre_and_within_unit_range() -> None:
    inst = _disks(256, [(128, 128, 15)])
    sample = MaskSample("disk", np.zeros((256, 256, 3), np.uint8), inst, None, "disk")
    patch = make_patch(sample, 256, 164)  # centred window: image pixel 128 is window pixel 82
    h, v = patch.hv[..., 0], patch.hv[..., 1]
    c = 82
    assert h[c, c] == 0 and v[c, c] == 0
    d = np.arange(1, 16)
    assert np.allclose(h[c, c + d], -h[c, c - d]) and np.allclose(v[c + d, c], -v[c - d, c])
    assert np.allclose(h[c - d, c], 0) and np.allclose(v[c, c + d], 0)  # each map varies along its own axis
    assert h.min() == -1 and h.max() == 1 and v.min() == -1 and v.max() == 1
    assert np.all(h[patch.np == 0] == 0) and np.all(v[patch.np == 0] == 0)
    assert patch.np.sum() == (inst > 0).sum() and patch.tp is None


def test_window_is_inside_the_image_and_small_images_are_padded() -> None:
    sample = _scene(200, n=4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        patch = make_patch(sample, 256, 164, rng)
        assert patch.rgb.shape == (256, 256, 3) and patch.inst.shape == (164, 164)
        assert set(np.unique(patch.inst)) <= set(np.unique(sample.inst))
    small = MaskSample("s", sample.rgb[:50, :60], sample.inst[:50, :60], sample.types[:50, :60], "s")
    patch = make_patch(small, 256, 164)
    assert patch.rgb.shape == (256, 256, 3) and (patch.inst[50:] == 0).all() and (patch.inst[:, 60:] == 0).all()


def test_augmentation_is_seeded_and_moves_image_masks_and_types_together() -> None:
    sample = _scene(n=6)
    a, b = augment(sample, np.random.default_rng(7)), augment(sample, np.random.default_rng(7))
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.inst, b.inst)
    seen = set()
    rng = np.random.default_rng(1)
    for _ in range(40):
        moved = augment(sample, rng)
        seen.add(moved.inst.tobytes())
        dark = moved.rgb.mean(axis=2) < 120
        assert (dark == (moved.inst > 0)).mean() > 0.99
        assert np.array_equal(moved.types > 0, moved.inst > 0)
    assert len(seen) == 8  # the eight symmetries of the square


# --- losses -------------------------------------------------------------------------------------------------

def _targets(patch) -> dict[str, torch.Tensor]:
    return {"np": torch.from_numpy(patch.np)[None], "hv": torch.from_numpy(patch.hv).permute(2, 0, 1)[None],
            "tp": torch.from_numpy(patch.tp)[None]}


def _perfect_outputs(targets: dict[str, torch.Tensor], n_types: int) -> dict[str, torch.Tensor]:
    def logits(classes: torch.Tensor, k: int) -> torch.Tensor:
        return 40.0 * torch.nn.functional.one_hot(classes, k).permute(0, 3, 1, 2).float()

    return {"np": logits(targets["np"], 2), "hv": targets["hv"].clone(), "tp": logits(targets["tp"], n_types)}


def test_losses_are_zero_for_perfect_predictions_and_positive_otherwise() -> None:
    targets = _targets(make_patch(_scene(), 256, 164))
    perfect = _perfect_outputs(targets, 4)
    total, terms = hovernet_loss(perfect, targets)
    assert set(terms) == {"np_ce", "np_dice", "hv_mse", "hv_msge", "tp_ce", "tp_dice"}
    assert float(total) < 1e-5 and all(v < 1e-5 for v in terms.values())
    for branch in ("np", "hv", "tp"):
        wrong = dict(perfect)
        wrong[branch] = perfect[branch].flip(-1) if branch != "hv" else perfect["hv"] * 0.5
        total, terms = hovernet_loss(wrong, targets)
        assert float(total) > 0.01
        assert all(v > 1e-3 for k, v in terms.items() if k.startswith(branch)), terms


def test_msge_only_looks_at_nuclear_pixels_and_sobel_follows_each_maps_own_axis() -> None:
    targets = _targets(make_patch(_scene(n=3), 256, 164))
    pred = targets["hv"].clone()
    far = torch.ones_like(targets["np"], dtype=torch.bool)
    far[:, :, :] = torch.nn.functional.max_pool2d(targets["np"][:, None].float(), 9, 1, 4)[:, 0] == 0
    pred[:, :, far[0]] = 0.7  # change the HV maps only further than the kernel reaches from any nucleus
    assert float(msge_loss(pred, targets["hv"], targets["np"])) == pytest.approx(0.0, abs=1e-10)
    assert float(torch.nn.functional.mse_loss(pred, targets["hv"])) > 0
    ramp = torch.arange(20.0)
    hv = torch.stack([ramp[None].expand(20, 20), torch.zeros(20, 20)])[None]  # horizontal map rising along x
    grad = hv_gradients(hv)[0, :, 5:-5, 5:-5]
    assert (grad[0] > 0).all() and torch.allclose(grad[1], torch.zeros_like(grad[1]))


def test_dice_of_a_class_absent_from_both_is_zero() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 0] = 40
    assert float(dice_loss(logits, target)) < 1e-6


# --- readers ------------------------------------------------------------------------------------------------

def test_pannuke_channels_become_distinct_instances_with_their_type() -> None:
    channels = np.zeros((8, 8, 5))
    channels[0:2, 0:2, 0] = 1
    channels[5:7, 5:7, 3] = 1  # the same id in another channel is another nucleus
    inst, types = instances_from_type_channels(channels)
    assert inst.max() == 2 and inst[0, 0] != inst[5, 5] and types[0, 0] == 1 and types[5, 5] == 4


def test_pannuke_fold_reads_as_samples_with_six_classes(tmp_path: Path) -> None:
    fold = _write_pannuke(tmp_path / "fold1")
    data = load_mask_dataset(tmp_path, "pannuke")
    assert isinstance(data, PanNukeFolds) and len(data) == 2 and data.n_types == 6
    sample, truth = data[1], _scene(seed=1)
    assert sample.rgb.dtype == np.uint8 and sample.rgb.shape == (256, 256, 3)
    assert np.array_equal(sample.inst > 0, truth.inst > 0) and sample.inst.max() == truth.inst.max()
    assert np.array_equal(sample.types, truth.types) and fold.name in sample.name


def test_consep_patches_read_types_from_the_table_and_group_tiles_by_source(tmp_path: Path) -> None:
    root = _write_consep(tmp_path / "c", ["train_1_000", "train_1_001", "train_2_000"])
    data = load_mask_dataset(root, "consep")
    assert isinstance(data, ConsepPatches) and data.n_types == 4 and data.type_names == ("kind1", "kind2", "kind3")
    assert data.sources == ["train_1", "train_1", "train_2"]
    assert np.array_equal(data[2].types, _scene(seed=2).types)
    train, val = split_by_source(data.sources, 0.5, seed=0)
    assert len(val) and not {data.sources[i] for i in train} & {data.sources[i] for i in val}


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "masks.npy").unlink(), "masks.npy is missing"),
    (lambda d: np.save(d / "masks.npy", np.zeros((2, 256, 256))), r"masks.npy has shape \(2, 256, 256\)"),
    (lambda d: np.save(d / "images.npy", np.zeros((2, 256, 256, 4))), "images.npy has shape"),
    (lambda d: (d / "images.npy").write_bytes(b"\x93NUMPY garbage"), "cannot read"),
    (lambda d: np.save(d / "types.npy", np.array(["a"])), "1 rows for 2 images"),
])
def test_malformed_pannuke_folds_are_named(tmp_path: Path, damage, message: str) -> None:
    fold = _write_pannuke(tmp_path / "fold", size=64)
    damage(fold)
    with pytest.raises(SegmenterTrainingError, match=message):
        PanNukeFolds(tmp_path)


def test_malformed_consep_folders_are_named(tmp_path: Path) -> None:
    root = _write_consep(tmp_path / "c", ["train_1_000"])
    with pytest.raises(SegmenterTrainingError, match="inst_maps_test.npz is missing"):
        ConsepPatches(root, "test")
    np.savez(root / "inst_maps_train.npz", names=np.array(["train_1_000"]))
    with pytest.raises(SegmenterTrainingError, match="lacks the array 'inst'"):
        ConsepPatches(root)
    with pytest.raises(SegmenterTrainingError, match="unknown data format 'coco'"):
        load_mask_dataset(root, "coco")


# --- training -----------------------------------------------------------------------------------------------

class TinyHoVer(nn.Module):
    """A stand-in with HoVer-Net's interface: encoder modules conv0, d0..d3, then conv_bot; ``decoder``
    branches tp/np/hv; ``spec``: 40 px in, 32 px out (four valid 3x3 convolutions; two dilated "same" ones
    widen the view to a whole nucleus)."""

    def __init__(self, n_types: int = 4, width: int = 16) -> None:
        super().__init__()
        self.mode, self.n_types = "tiny", n_types
        self.spec = ModeSpec(40, 32, 3, pad_stem=False, crop_d0_px=0, crop_d1_px=0)

        def block(dilation: int = 1, padding: int = 0) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(width, width, 3, dilation=dilation, padding=padding),
                                 nn.BatchNorm2d(width), nn.ReLU())

        self.conv0 = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU())
        self.d0, self.d1, self.d2, self.d3 = block(), block(2, 2), block(4, 4), block()
        self.conv_bot = nn.Conv2d(width, width, 1)
        self.decoder = nn.ModuleDict(OrderedDict(
            (name, nn.Sequential(block(), nn.Conv2d(width, ch, 1))) for name, ch in (("tp", n_types), ("np", 2),
                                                                                  ("hv", 2))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.conv_bot(self.d3(self.d2(self.d1(self.d0(self.conv0(x / 255.0))))))
        return {name: branch(z) for name, branch in self.decoder.items()}


class _InMemory:
    def __init__(self, samples: list[MaskSample], n_types: int | None = 4) -> None:
        self.samples, self.n_types, self.type_names = samples, n_types, ()
        self.sources, self.description = [s.source for s in samples], "in memory"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> MaskSample:
        return self.samples[i]


def test_a_few_dozen_steps_on_two_images_reduce_the_training_loss() -> None:
    torch.set_num_threads(1)
    data = _InMemory([_scene(32, n=2, seed=0), _scene(32, n=2, seed=1)])  # image = output window: fixed targets
    config = TrainConfig(epochs=40, batch_size=2, lr=3e-3, val_fraction=0, augmentation=False, device="cpu", seed=0)
    trainer = SegmenterTrainer(config, progress=False).fit(data, model=TinyHoVer())
    losses = np.array([row["train_loss"] for row in trainer.history_])
    assert len(losses) == 40 and losses[-5:].mean() < 0.5 * losses[:5].mean(), losses.round(2)
    for term in ("np_ce", "hv_mse", "tp_ce"):
        assert trainer.history_[-1][f"train_{term}"] < trainer.history_[0][f"train_{term}"], term


def test_phase_one_trains_only_the_decoders_and_phase_two_everything() -> None:
    data = _InMemory([_scene(48, n=3, seed=0)])
    model = TinyHoVer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = []
    config = TrainConfig(epochs=2, freeze_epochs=1, batch_size=1, lr=1e-2, val_fraction=0, device="cpu")
    trainer = SegmenterTrainer(config, progress=False,
                               on_epoch=lambda t: snapshots.append({k: v.clone() for k, v in
                                                                    t.model_.state_dict().items()}))
    trainer.fit(data, model=model)
    after_one, after_two = snapshots
    assert [row["phase"] for row in trainer.history_] == ["decoders", "all"]
    for key in before:
        if key.split(".")[0] in ENCODER_MODULES:  # BatchNorm statistics included
            assert torch.equal(after_one[key], before[key]), key
        elif key.endswith("weight"):
            assert not torch.equal(after_one[key], before[key]), key
    assert all(not torch.equal(after_two[f"{m}.0.weight"], after_one[f"{m}.0.weight"]) for m in ENCODER_MODULES)


def test_validation_reports_loss_and_detection_scores_and_early_stopping_keeps_the_best() -> None:
    data = _InMemory([_scene(48, n=3, seed=s) for s in range(4)])
    config = TrainConfig(epochs=6, batch_size=2, lr=0.3, val_fraction=0.5, patience=1, device="cpu")
    trainer = SegmenterTrainer(config, progress=False).fit(data, model=TinyHoVer())
    row = trainer.history_[0]
    assert {"val_loss", "val_f1", "val_pq", "val_precision", "val_recall"} <= set(row)
    assert 0 <= row["val_f1"] <= 1 and 0 <= row["val_pq"] <= 1
    losses = [r["val_loss"] for r in trainer.history_]
    assert trainer.best_epoch_ == int(np.argmin(losses)) + 1
    assert len(losses) == 6 or len(losses) == trainer.best_epoch_ + 1  # stopped one epoch after the best


def test_init_weights_keep_every_fitting_tensor_and_restart_a_type_branch_of_another_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pannuke = HoVerNet("fast", n_types=6)
    path = tmp_path / "pannuke.tar"
    torch.save({"desc": {f"module.{k}": v for k, v in pannuke.state_dict().items()}}, path)  # original layout
    model = build_model(n_types=5, mode=None, init_weights=path)
    ours, theirs = model.state_dict(), pannuke.state_dict()
    assert model.mode == "fast" and model.decoder["tp"].u0.conv.weight.shape[0] == 5
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("decoder.tp.u0.conv"))
    with pytest.raises(SegmenterTrainingError, match="fast-mode"):
        build_model(n_types=5, mode="original", init_weights=path)


def test_one_step_checkpoint_loads_through_the_preprocess_loader_and_segments(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    _write_pannuke(tmp_path / "fold", n=1, size=160)
    out = tmp_path / "models" / "hovernet.pth"
    config = TrainConfig(epochs=1, batch_size=1, patch_px=104, val_fraction=0, device="cpu")  # 104 -> 12 px
    meta = run_train_segmenter(tmp_path / "fold", "pannuke", out, config, progress=False)
    assert meta["mode"] == "fast" and meta["n_types"] == 6 and meta["epochs_run"] == 1 and meta["best_epoch"] == 1
    assert meta["data_format"] == "pannuke" and meta["losses"]["train_loss"] > 0 and meta["history"]
    assert json.loads(out.with_suffix(".json").read_text()) == meta
    segmenter = HoVerNetSegmenter(out, device="cpu", batch_size=1, patch_px=128)  # one 128 px patch: 36 px out
    assert segmenter.model_.mode == "fast" and segmenter.n_types_ == 6
    labels, types = segmenter.label_and_type(_scene(36, n=2).rgb, mpp=0.25)
    assert labels.shape == (36, 36) and labels.dtype == np.int32 and len(types) == labels.max()
    saved = torch.load(out, weights_only=True)
    assert all(torch.equal(saved[k], v.cpu()) for k, v in segmenter.model_.state_dict().items())


# --- CLI ----------------------------------------------------------------------------------------------------

def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["train-segmenter", *argv, "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case", ["missing dir", "wrong format", "corrupt arrays", "bad option", "out is a folder"])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys, case: str) -> None:
    fold = _write_pannuke(tmp_path / "fold", n=1, size=64)
    argv = {"missing dir": ["--data", str(tmp_path / "nope"), "--format", "pannuke"],
            "wrong format": ["--data", str(fold), "--format", "coco"],
            "corrupt arrays": ["--data", str(fold), "--format", "pannuke"],
            "bad option": ["--data", str(fold), "--format", "pannuke", "--epochs", "0"],
            "out is a folder": ["--data", str(fold), "--format", "pannuke"]}[case]
    if case == "corrupt arrays":
        (fold / "masks.npy").write_bytes(b"not an array")
    out = tmp_path if case == "out is a folder" else tmp_path / "m.pth"
    code, err = _cli(capsys, *argv, "--out", str(out))
    expected = {"missing dir": "nope does not exist", "wrong format": "unknown data format 'coco'",
                "corrupt arrays": "cannot read", "bad option": "epochs must be >= 1",
                "out is a folder": "is a folder"}[case]
    lines = [line for line in err.splitlines() if "INFO" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hali train-segmenter: error:")
    assert expected in lines[0] and not (tmp_path / "m.pth").exists()
