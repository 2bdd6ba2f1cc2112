"""Images with nucleus instance masks, read for ``hali train-segmenter`` from the two layouts users hold.

- ``pannuke``: PanNuke folds (Gamper et al. 2020). A folder (or a folder of fold folders) each holding
  ``images.npy`` float/uint8 (N, 256, 256, 3) RGB 0..255 and ``masks.npy`` (N, 256, 256, C): channels
  0..C-2 hold instance ids of one nucleus type each (PanNuke: neoplastic, inflammatory, connective, dead,
  epithelial), the last channel is background. ``types.npy`` (N,) tissue names is optional and only
  checked for length. Arrays are memory-mapped: a fold's float64 ``masks.npy`` is about 8 GB.
- ``consep``: CoNSeP-style patches (``../shared/data/consep_patches``): ``inst_maps_<split>.npz`` with
  ``names`` (N,) and ``inst`` (N, rows, cols) uint16 instance ids, ``images/<name>.jpg|png``, and,
  optionally, ``nuclei.csv`` (``patch, inst_id, type_id[, type_name]``) giving each instance its type.

Every sample is a :class:`MaskSample` with instances numbered 1..N; a sample's ``source`` groups patches
cut from one image (CoNSeP tiles overlap), so the validation split never shares a source with training.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from preprocess.errors import SegmenterTrainingError

logger = logging.getLogger(__name__)

PANNUKE_TYPE_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
CONSEP_SOURCE = re.compile(r"^(.+)_\d{3}$")  # train_10_003 -> train_10: the 16 tiles of one 1000 px image
_IMAGE_SUFFIXES = (".jpg", ".png", ".tif", ".jpeg")


@dataclass(frozen=True)
class MaskSample:
    """One training image: ``rgb`` uint8 (rows, cols, 3); ``inst`` int32 (rows, cols), 0 background and
    nuclei 1..N; ``types`` int32 (rows, cols) nucleus type per pixel (0 background) or None without types;
    ``source`` the image it was cut from (a split never divides a source)."""

    name: str
    rgb: np.ndarray
    inst: np.ndarray
    types: np.ndarray | None
    source: str


class MaskDataset:
    """Indexable samples: ``dataset[i]`` is a :class:`MaskSample`, read on demand.

    ``n_types``: classes of the type map including background 0 (HoVer-Net's ``n_types``), None without
    types. ``type_names``: names of types 1..n_types-1. ``sources``: one per sample, for grouped splits.
    """

    description: str
    n_types: int | None
    type_names: tuple[str, ...]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> MaskSample:
        raise NotImplementedError


class PanNukeFolds(MaskDataset):
    """All PanNuke folds under ``root`` (the fold folder itself, or a folder holding several)."""

    def __init__(self, root: Path) -> None:
        root = _existing_dir(root, "PanNuke folds (folders with images.npy and masks.npy)")
        fold_dirs = sorted({p.parent for p in root.rglob("images.npy")})
        if not fold_dirs:
            raise SegmenterTrainingError(f"no images.npy under {root}; a PanNuke fold folder holds images.npy "
                                         "(N, 256, 256, 3) and masks.npy (N, 256, 256, 6)")
        self.folds = [_read_fold(d) for d in fold_dirs]
        channels = {masks.shape[3] for _, _, masks in self.folds}
        if len(channels) > 1:
            raise SegmenterTrainingError(f"PanNuke folds under {root} have masks with {sorted(channels)} "
                                         "channels; all folds must have the same types")
        self.n_types = channels.pop()  # C - 1 type channels + background = C classes with 0 = background
        self.type_names = PANNUKE_TYPE_NAMES if self.n_types == 6 else tuple(
            f"type {t}" for t in range(1, self.n_types))
        self.index = [(f, i) for f, (_, images, _) in enumerate(self.folds) for i in range(len(images))]
        self.sources = [f"{self.folds[f][0].name}/{i}" for f, i in self.index]
        self.description = f"PanNuke {', '.join(str(d) for d, _, _ in self.folds)}"

    def __getitem__(self, index: int) -> MaskSample:
        fold, i = self.index[index]
        fold_dir, images, masks = self.folds[fold]
        rgb = np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8)
        inst, types = instances_from_type_channels(np.asarray(masks[i, :, :, :-1]))
        return MaskSample(f"{fold_dir.name}/{i}", rgb, inst, types, self.sources[index])


def instances_from_type_channels(channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int32 instance map 1..N, int32 type map) of PanNuke type channels (rows, cols, T) of instance ids.

    Each channel's ids are renumbered after the previous channels', so equal ids in two channels stay two
    nuclei; a pixel claimed by two channels keeps the later one. Types are channel index + 1.
    """
    inst = np.zeros(channels.shape[:2], np.int32)
    types = np.zeros(channels.shape[:2], np.int32)
    next_id = 0
    for t in range(channels.shape[2]):
        ids = np.rint(channels[:, :, t]).astype(np.int64)
        inside = ids > 0
        if not inside.any():
            continue
        unique, inverse = np.unique(ids[inside], return_inverse=True)
        inst[inside] = next_id + 1 + inverse
        types[inside] = t + 1
        next_id += len(unique)
    return _renumber(inst), types


def _read_fold(fold_dir: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    images = _load_npy(fold_dir / "images.npy")
    masks = _load_npy(fold_dir / "masks.npy")
    if images.ndim != 4 or images.shape[3] != 3:
        raise SegmenterTrainingError(f"{fold_dir / 'images.npy'} has shape {images.shape}; expected (N, rows, cols, 3) "
                                     "RGB 0..255")
    if masks.ndim != 4 or masks.shape[:3] != images.shape[:3] or masks.shape[3] < 2:
        raise SegmenterTrainingError(
            f"{fold_dir / 'masks.npy'} has shape {masks.shape}; expected {(*images.shape[:3], 6)}: instance ids "
            "per type channel, background last")
    tissue = fold_dir / "types.npy"
    if tissue.is_file() and len(_load_npy(tissue)) != len(images):
        raise SegmenterTrainingError(f"{tissue} has {len(_load_npy(tissue))} rows for {len(images)} images")
    logger.info("PanNuke fold %s: %d images, %d type channels", fold_dir, len(images), masks.shape[3] - 1)
    return fold_dir, images, masks


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SegmenterTrainingError(f"{path} is missing; a PanNuke fold folder holds images.npy and masks.npy")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SegmenterTrainingError(f"cannot read {path} ({exc}); expected a numeric .npy array") from exc


class ConsepPatches(MaskDataset):
    """CoNSeP-style patches of one split under ``root``; types from ``nuclei.csv`` when it is there."""

    def __init__(self, root: Path, split: str = "train") -> None:
        root = _existing_dir(root, "CoNSeP-style patches (inst_maps_<split>.npz, images/)")
        self.root, self.split = root, split
        self.names, self.inst = _read_inst_maps(root / f"inst_maps_{split}.npz")
        self.images_dir = root / "images"
        missing = [n for n in self.names[:50] if _image_path(self.images_dir, n) is None]
        if missing:
            raise SegmenterTrainingError(f"no image for {missing[:3]} in {self.images_dir} (looked for "
                                         f"<name>{'|'.join(_IMAGE_SUFFIXES)})")
        self.type_of, self.type_names = _read_type_table(root / "nuclei.csv", set(self.names))
        self.n_types = len(self.type_names) + 1 if self.type_of else None
        self.sources = [m.group(1) if (m := CONSEP_SOURCE.match(n)) else n for n in self.names]
        self.description = f"CoNSeP-style {root} split {split}"
        logger.info("%s: %d patches from %d images, %s", self.description, len(self.names), len(set(self.sources)),
                    f"{self.n_types - 1} types" if self.n_types else "no types")

    def __getitem__(self, index: int) -> MaskSample:
        name = self.names[index]
        with Image.open(_image_path(self.images_dir, name)) as im:
            rgb = np.asarray(im.convert("RGB"))
        inst = _renumber(self.inst[index].astype(np.int32))
        if rgb.shape[:2] != inst.shape:
            raise SegmenterTrainingError(f"image {name} is {rgb.shape[:2]} but its instance map is {inst.shape}")
        types = None
        if self.type_of:
            lookup = self.type_of.get(name, {})
            original = self.inst[index].astype(np.int64)
            table = np.zeros(int(original.max()) + 1, np.int32)
            for inst_id, type_id in lookup.items():
                if inst_id < len(table):
                    table[inst_id] = type_id
            types = table[original]
        return MaskSample(name, rgb, inst, types, self.sources[index])


def _read_inst_maps(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.is_file():
        raise SegmenterTrainingError(f"{path} is missing; a CoNSeP-style folder holds inst_maps_<split>.npz "
                                     "(names, inst) and images/ (check --split)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("names", "inst") if k not in npz.files]
            if missing:
                raise SegmenterTrainingError(f"{path} lacks the array {missing[0]!r}; it needs 'names' (N,) and "
                                             "'inst' (N, rows, cols) instance ids")
            names, inst = [str(n) for n in npz["names"]], np.asarray(npz["inst"])
    except (ValueError, OSError, EOFError) as exc:
        raise SegmenterTrainingError(f"cannot read {path} ({exc}); expected an .npz of 'names' and 'inst'") from exc
    if inst.ndim != 3 or len(inst) != len(names) or not np.issubdtype(inst.dtype, np.integer):
        raise SegmenterTrainingError(f"{path}: 'inst' is {inst.dtype} {inst.shape} for {len(names)} names; expected "
                                     f"integer ({len(names)}, rows, cols) instance ids")
    return names, inst


def _read_type_table(path: Path, names: set[str]) -> tuple[dict[str, dict[int, int]], tuple[str, ...]]:
    """{patch: {inst_id: type_id}} of the patches in ``names`` and the type names 1..K; empty without a file."""
    if not path.is_file():
        return {}, ()
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        type_of: dict[str, dict[int, int]] = {}
        names_by_id: dict[int, str] = {}
        for row in rows:
            type_id = int(row["type_id"])
            names_by_id.setdefault(type_id, row.get("type_name") or f"type {type_id}")
            if row["patch"] in names:
                type_of.setdefault(row["patch"], {})[int(row["inst_id"])] = type_id
    except (KeyError, ValueError) as exc:
        raise SegmenterTrainingError(f"{path}: cannot read the type of each nucleus ({exc!r}); it needs the "
                                     "columns patch, inst_id, type_id") from None
    if not names_by_id:
        return {}, ()
    if min(names_by_id) < 1:
        raise SegmenterTrainingError(f"{path}: type_id must be 1..K (0 is background), found {min(names_by_id)}")
    top = max(names_by_id)
    return type_of, tuple(names_by_id.get(t, f"type {t}") for t in range(1, top + 1))


def _image_path(images_dir: Path, name: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        if (images_dir / f"{name}{suffix}").is_file():
            return images_dir / f"{name}{suffix}"
    return None


def _existing_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise SegmenterTrainingError(f"data folder {path} does not exist; pass --data with a folder of {what}")
    return path


def _renumber(inst: np.ndarray) -> np.ndarray:
    """int32 copy of ``inst`` with its ids > 0 renumbered 1..N in increasing order."""
    ids, inverse = np.unique(inst, return_inverse=True)
    offset = 0 if ids[0] == 0 else 1
    return (inverse.reshape(inst.shape) + offset).astype(np.int32)


DATASET_FORMATS: dict[str, Callable[..., MaskDataset]] = {
    "pannuke": lambda data, split="train": PanNukeFolds(data),
    "consep": lambda data, split="train": ConsepPatches(data, split),
}


def load_mask_dataset(data: Path, data_format: str, split: str = "train") -> MaskDataset:
    """The dataset at ``data`` in ``data_format`` (a key of :data:`DATASET_FORMATS`); ``split`` for CoNSeP."""
    if data_format not in DATASET_FORMATS:
        raise SegmenterTrainingError(f"unknown data format {data_format!r}; use one of {sorted(DATASET_FORMATS)}")
    dataset = DATASET_FORMATS[data_format](Path(data), split)
    if len(dataset) == 0:
        raise SegmenterTrainingError(f"{dataset.description} holds no images")
    return dataset


def split_by_source(sources: Sequence[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): about ``val_fraction`` of the sources, drawn with ``seed``, go to
    validation whole; at least one source stays for training. ``val_fraction`` 0 gives no validation."""
    unique = sorted(set(sources))
    n_val = min(round(val_fraction * len(unique)), len(unique) - 1) if val_fraction > 0 else 0
    if val_fraction > 0 and n_val == 0 and len(unique) > 1:
        n_val = 1
    held = set(np.random.default_rng(seed).permutation(unique)[:n_val].tolist())
    is_val = np.array([s in held for s in sources], bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
