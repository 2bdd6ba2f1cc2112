"""Cell embeddings for the simulation: cut a patch around each centroid, embed it, cache the result.

Featurizers are registered by name in :data:`FEATURIZERS` (a factory taking the checkpoint path or None and
returning an object with ``name`` and ``embed(patches uint8 (N, H, W, 3)) -> float32 (N, d)``), so another
featurizer joins with one line. The cache is an ``.npz`` keyed by a hash of the cells (images and
centroids), the featurizer's name and the patch geometry, so a second run reads it back in a second.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from adapters.errors import AdapterError
from adapters.slide_reader import OpenSlideReader
from ml_backend.simulation import SimulationError
from ml_backend.simulation.dataset import CellDataset
from preprocess.errors import PreprocessError
from preprocess.features.cellnet import DEFAULT_WEIGHTS as DEFAULT_CELLNET_WEIGHTS
from preprocess.features.cellnet import CellNetFeaturizer
from preprocess.features.featurize import ResNet18Featurizer, extract_patches
from preprocess.features.handcrafted import HandcraftedFeaturizer

logger = logging.getLogger(__name__)


class Featurizer(Protocol):
    name: str

    def embed(self, patches: np.ndarray) -> np.ndarray: ...


FEATURIZERS: dict[str, Callable[[Path | None], Featurizer]] = {
    "resnet18": lambda checkpoint: ResNet18Featurizer(checkpoint),
    "handcrafted": lambda checkpoint: HandcraftedFeaturizer(),  # 20 um patches, as --patch-px 80 at 0.25 mpp
    # 20 um cut to 40 px, as --patch-px 80 at 0.25 mpp; the packaged weights were trained on CoNSeP's train split
    "cellnet": lambda checkpoint: CellNetFeaturizer(checkpoint or DEFAULT_CELLNET_WEIGHTS),
}


def make_featurizer(name: str, checkpoint: Path | None = None) -> Featurizer:
    """The featurizer registered as ``name``; :class:`SimulationError` naming the valid ones otherwise."""
    if name not in FEATURIZERS:
        raise SimulationError(f"unknown featurizer {name!r}; choose one of {sorted(FEATURIZERS)}")
    return FEATURIZERS[name](checkpoint)


def embed_cells(
    data: CellDataset,
    images_dir: Path,
    featurizer: Featurizer,
    patch_px: int,
    out_px: int = 40,
    image_suffix: str = ".jpg",
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Features (N, d) float32 of every cell's ``patch_px``-pixel square, resized to ``out_px``."""
    key = _cache_key(data, featurizer, patch_px, out_px)
    cache = None if cache_dir is None else Path(cache_dir) / f"features-{key}.npz"
    if cache is not None and cache.is_file():
        logger.info("simulation features read from cache %s", cache)
        return np.load(cache)["features"]
    features = np.concatenate([_embed_image(data, name, images_dir, image_suffix, featurizer, patch_px, out_px)
                               for name in np.unique(data.image)])
    order = np.concatenate([np.flatnonzero(data.image == name) for name in np.unique(data.image)])
    out = np.empty_like(features)
    out[order] = features
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, features=out)
        tmp.replace(cache)
    return out


def _embed_image(data, name, images_dir, suffix, featurizer, patch_px, out_px) -> np.ndarray:
    path = _image_path(Path(images_dir), name, suffix)
    try:
        with OpenSlideReader(path, mpp=1.0) as reader:  # the mpp is unused: patch sizes are in pixels
            patches = extract_patches(reader, data.xy[data.image == name], patch_px, out_px)
    except (PreprocessError, AdapterError) as exc:
        raise SimulationError(f"cannot read image {path} for the cells of {name!r}: {exc}") from exc
    return featurizer.embed(patches)


def _image_path(images_dir: Path, name: str, suffix: str) -> Path:
    for candidate in (images_dir / f"{name}{suffix}", images_dir / name):
        if candidate.is_file():
            return candidate
    raise SimulationError(f"no image {images_dir / (name + suffix)} for table value {name!r}; "
                          "check --images-dir and --image-suffix")


def _cache_key(data: CellDataset, featurizer: Featurizer, patch_px: int, out_px: int) -> str:
    digest = hashlib.sha256()
    digest.update("\0".join(data.image.tolist()).encode())
    digest.update(np.ascontiguousarray(data.xy).tobytes())
    digest.update(f"{featurizer.name}|{patch_px}|{out_px}".encode())
    return digest.hexdigest()[:16]
