"""A file that is not a usable checkpoint gets one line naming it and why, from both checkpoint loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from preprocess.errors import FeaturizerError, SegmenterWeightsError
from preprocess.features.featurize import ResNet18Featurizer
from preprocess.nuclei.hovernet.weights import load_hovernet


def _good_bytes(tmp_path: Path, **save_kwargs) -> bytes:
    path = tmp_path / "good.pt"
    torch.save({"conv.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(1000)}, path, **save_kwargs)
    return path.read_bytes()


def _truncated_zip(path: Path) -> None:
    data = _good_bytes(path.parent)
    path.write_bytes(data[: len(data) // 2])


def _truncated_legacy(path: Path) -> None:
    data = _good_bytes(path.parent, _use_new_zipfile_serialization=False)
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 46827520\n")


def _pickled_objects(path: Path) -> None:
    torch.save({"weights": np.zeros(3), "model": nn.Linear(2, 2)}, path)


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated zip": (_truncated_zip, r"is truncated or corrupt \(.+\): download or copy it again"),
    "truncated legacy": (_truncated_legacy, r"is truncated or corrupt \(unexpected EOF"),
    "random bytes": (_random_bytes, r"is not a torch checkpoint"),
    "git lfs pointer": (_lfs_pointer, r"is a Git LFS pointer \(\d+ bytes\), not the weights: run `git lfs pull`"),
    "empty": (lambda p: p.touch(), r"is empty \(0 bytes\)"),
    "directory": (lambda p: p.mkdir(), r"is a directory"),
    "pickled objects": (_pickled_objects, r"holds pickled Python objects.*not unpickled for safety"),
}
LOADERS = {"resnet18": (ResNet18Featurizer, FeaturizerError), "hovernet": (load_hovernet, SegmenterWeightsError)}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", CASES)
def test_unusable_weights_file_gets_one_line_naming_it_and_the_reason(tmp_path: Path, case: str, loader: str) -> None:
    make, reason = CASES[case]
    load, error = LOADERS[loader]
    path = tmp_path / "weights.pt"
    make(path)
    with pytest.raises(error, match=reason) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "\x1b" not in message and len(message) < 700
