"""``hali pretrain`` on tiny synthetic data: CoNSeP-style tables, PanNuke folds, checkpoint + sidecar."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml_backend.cli import main
from preprocess.errors import PretrainError
from preprocess.features.featurize import ResNet18Featurizer
from preprocess.features.pretrain import PANNUKE_CLASSES, load_centroid_table, load_pannuke_fold, run_pretrain

COLOURS = {"epithelial": (120, 60, 160), "inflammatory": (40, 20, 90)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def consep(tmp_path: Path) -> Path:
    """A centroid table over 4 images (2 train, 2 test) of 64x64 px, 3 nuclei each; returns the CSV path."""
    (tmp_path / "images").mkdir()
    rows = []
    for split in ("train", "test"):
        for k in range(2):
            name = f"{split}_{k}"
            rgb = np.full((64, 64, 3), 230, np.uint8)
            for j, (cx, cy) in enumerate([(12, 12), (40, 20), (30, 50)]):
                cls = "epithelial" if (j + k) % 2 else "inflammatory"
                rgb[cy - 4 : cy + 4, cx - 4 : cx + 4] = COLOURS[cls]
                rows.append({"patch": name, "split": split, "cx": cx, "cy": cy, "type_name": cls})
            Image.fromarray(rgb).save(tmp_path / "images" / f"{name}.png")  # lossless, unlike CoNSeP's .jpg
    path = tmp_path / "nuclei.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["patch", "split", "cx", "cy", "type_name"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _pannuke_fold(root: Path, n_images: int = 2) -> Path:
    """A fold in PanNuke's released layout: images/fold1/images.npy and masks/fold1/masks.npy (float64)."""
    images = np.full((n_images, 256, 256, 3), 220.0)
    masks = np.zeros((n_images, 256, 256, 6))
    masks[..., 5] = 1.0
    for i in range(n_images):
        masks[i, 100:110, 50:60, 0] = 3  # one neoplastic nucleus centred at (x, y) = (54.5, 104.5)
        masks[i, 10:16, 200:206, 1] = 7  # and an inflammatory one at (202.5, 12.5)
        masks[i, 150:154, 150:154, 1] = 9  # and another at (151.5, 151.5)
        images[i, 100:110, 50:60] = (90, 40, 140)
    (root / "images" / "fold1").mkdir(parents=True)
    (root / "masks" / "fold1").mkdir(parents=True)
    np.save(root / "images" / "fold1" / "images.npy", images)
    np.save(root / "masks" / "fold1" / "masks.npy", masks)
    np.save(root / "images" / "fold1" / "types.npy", np.array(["Colon"] * n_images))
    return root


def test_centroid_table_gives_one_patch_per_row_of_the_split(consep: Path) -> None:
    train = load_centroid_table(consep, "train", patch_px=16, out_px=40)
    assert train.patches.shape == (6, 40, 40, 3) and train.patches.dtype == np.uint8
    assert train.classes == ("epithelial", "inflammatory") and sorted(np.bincount(train.labels)) == [3, 3]
    # The first nucleus of train_0 is inflammatory, dark, and fills the patch's centre.
    assert train.labels[0] == 1 and tuple(train.patches[0, 20, 20]) == COLOURS["inflammatory"]


def test_pannuke_fold_gives_a_patch_per_instance_labelled_by_its_channel(tmp_path: Path) -> None:
    fold = load_pannuke_fold(_pannuke_fold(tmp_path), patch_px=20, out_px=40)
    assert fold.classes == PANNUKE_CLASSES
    assert fold.patches.shape == (6, 40, 40, 3) and fold.labels.tolist() == [0, 1, 1, 0, 1, 1]
    assert fold.patches[0, 20, 20].tolist() == [90, 40, 140]  # the neoplastic nucleus is at the centre


def test_one_epoch_writes_a_checkpoint_that_the_featurizer_loads(consep: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "backbone.pt"
    meta = run_pretrain(out, table=consep, epochs=1, batch_size=4, patch_um=4.0)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert meta["classes"] == ["epithelial", "inflammatory"] and meta["epochs"] == 1
    assert meta["data"]["n_train"] == 6 and meta["data"]["n_test"] == 6
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and len(meta["mean"]) == 3 and len(meta["std"]) == 3
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    assert not list(out.parent.glob("*.tmp"))

    patches = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    with_sidecar = ResNet18Featurizer(out).embed(patches)
    assert with_sidecar.shape == (3, 512) and np.isfinite(with_sidecar).all()
    out.with_suffix(".json").unlink()  # without the sidecar, ImageNet's normalisation: other embeddings
    assert not np.allclose(ResNet18Featurizer(out).embed(patches), with_sidecar)


def test_pannuke_folds_train_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fold = _pannuke_fold(tmp_path / "fold1", n_images=1)
    out = tmp_path / "pannuke.pt"
    code = main(["pretrain", "--pannuke-train", str(fold), "--pannuke-test", str(fold), "--epochs", "1",
                 "--batch-size", "2", "--out", str(out)])
    assert code == 0 and "test accuracy" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == list(PANNUKE_CLASSES)


def test_limit_caps_the_cells_used(consep: Path, tmp_path: Path) -> None:
    meta = run_pretrain(tmp_path / "b.pt", table=consep, epochs=1, batch_size=8, limit=4)
    assert meta["data"]["n_train"] == 4 and meta["data"]["n_test"] == 4


def test_a_missing_split_or_source_is_a_clear_error(consep: Path, tmp_path: Path) -> None:
    with pytest.raises(PretrainError, match="split 'validation'"):
        load_centroid_table(consep, "validation")
    with pytest.raises(PretrainError, match="either a centroid table"):
        run_pretrain(tmp_path / "c.pt")
