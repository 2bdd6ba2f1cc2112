"""``hali pretrain``: train the ResNet-18 backbone on labeled nuclei, as HALI does, for preprocessing to embed with.

HALI (van der Wal et al. 2021) trains a ResNet-18 on patches around labeled nucleus centroids (PanNuke folds 1
and 2 for training, fold 3 for testing), normalised with the training set's mean and std, with cross-entropy
on the cell class and ``fc`` replaced by a K-class layer. This module does the same from two sources:

- :func:`load_centroid_table`: a CoNSeP-style CSV of centroids (columns ``patch, split, cx, cy`` and a class
  column), images ``<images_dir>/<patch>.jpg``, one split at a time;
- :func:`load_pannuke_fold`: a PanNuke fold directory holding ``images.npy`` (N, 256, 256, 3) and
  ``masks.npy`` (N, 256, 256, 6: one instance map per type, then background), anywhere below it.

Patches are cut exactly as preprocessing cuts them (:func:`preprocess.features.featurize.extract_patches`: a square of
``patch_um`` micrometres, white beyond the image, resized to ``out_px``), so the backbone sees at training
what it sees in use. :func:`save_backbone` writes the backbone's ``state_dict`` without ``fc`` (loadable by
``ResNet18Featurizer(checkpoint=...)``) and a JSON sidecar beside it (``resnet18.pt`` -> ``resnet18.json``)
with the data, classes, epochs, test accuracy and the normalisation mean/std the featurizer then uses.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi
from torch import nn
from torchvision.models import resnet18

from adapters.atomic import write_atomic
from preprocess.errors import PretrainError
from preprocess.features.featurize import cell_patch_px, extract_patches

logger = logging.getLogger(__name__)

PANNUKE_CLASSES = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
SIDECAR_FORMAT = 1
_EVAL_BATCH = 512


@dataclass(frozen=True, eq=False)
class NucleusPatches:
    """Labeled nucleus patches: ``patches`` uint8 (N, out_px, out_px, 3) RGB, ``labels`` int64 (N,) indexing
    ``classes``; ``source`` says where they came from (for the sidecar)."""

    patches: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> NucleusPatches:
        """At most ``n`` patches drawn at random (seeded), in their original order; all when ``n`` is None."""
        if n is None or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return NucleusPatches(self.patches[keep], self.labels[keep], self.classes, f"{self.source} ({n} drawn)")


class _ArrayReader:
    """An in-memory RGB image (rows, cols, 3) behind the slide reader's ``read_region``; white beyond it."""

    def __init__(self, rgb: np.ndarray) -> None:
        self._rgb = rgb

    def read_region(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, np.uint8)
        rows, cols = self._rgb.shape[:2]
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + width, cols), min(y0 + height, rows)
        if xa < xb and ya < yb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self._rgb[ya:yb, xa:xb, :3]
        return out


def patches_from_image(rgb: np.ndarray, centroids_xy: np.ndarray, patch_px: int, out_px: int = 40) -> np.ndarray:
    """uint8 (N, out_px, out_px, 3) patches of an RGB image (rows, cols, 3) around (x, y) centroids (N, 2)."""
    if len(centroids_xy) == 0:
        return np.zeros((0, out_px, out_px, 3), np.uint8)
    return extract_patches(_ArrayReader(np.asarray(rgb, np.uint8)), centroids_xy, patch_px, out_px)


def load_centroid_table(
    csv_path: Path, split: str, images_dir: Path | None = None, class_column: str = "type_name",
    classes: Sequence[str] | None = None, patch_px: int = 80, out_px: int = 40,
) -> NucleusPatches:
    """Patches of the rows of ``csv_path`` whose ``split`` column equals ``split``.

    ``images_dir`` defaults to ``images/`` beside the CSV; ``classes`` (the label order) defaults to the
    sorted class names of the whole table, so train and test splits agree.
    """
    rows = _read_rows(csv_path, ("patch", "split", "cx", "cy", class_column))
    classes = tuple(classes) if classes else tuple(sorted({r[class_column] for r in rows}))
    index = {name: i for i, name in enumerate(classes)}
    chosen = [r for r in rows if r["split"] == split and r[class_column] in index]
    if not chosen:
        raise PretrainError(f"{csv_path} has no rows with split {split!r} and a class in {list(classes)}; "
                            "check --train-split/--test-split and the class column")
    images_dir = images_dir or csv_path.parent / "images"
    by_image: dict[str, list[dict[str, str]]] = {}
    for row in chosen:
        by_image.setdefault(row["patch"], []).append(row)
    parts, labels = [], []
    for name, members in by_image.items():
        xy = np.array([[float(r["cx"]), float(r["cy"])] for r in members])
        parts.append(patches_from_image(_read_image(images_dir, name), xy, patch_px, out_px))
        labels += [index[r[class_column]] for r in members]
    return NucleusPatches(np.concatenate(parts), np.array(labels, np.int64), classes, f"{csv_path} split={split}")


def _read_rows(csv_path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise PretrainError(f"{csv_path} lacks columns {missing}; it has {reader.fieldnames}")
            return list(reader)
    except OSError as exc:
        raise PretrainError(f"cannot read centroid table {csv_path} ({exc}); check the path") from exc


def _read_image(images_dir: Path, name: str) -> np.ndarray:
    for suffix in (".jpg", ".png", ".tif"):
        path = images_dir / f"{name}{suffix}"
        if path.is_file():
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    raise PretrainError(f"no image {name}.jpg/.png/.tif in {images_dir}; pass --images with the images folder")


def load_pannuke_fold(fold_dir: Path, patch_px: int = 80, out_px: int = 40) -> NucleusPatches:
    """Patches around every instance of a PanNuke fold; label = the type channel it is drawn in.

    The arrays are memory-mapped and read one image at a time: a fold's ``masks.npy`` is float64, ~8 GB.
    """
    images = np.load(_find_one(fold_dir, "images.npy"), mmap_mode="r")
    masks = np.load(_find_one(fold_dir, "masks.npy"), mmap_mode="r")
    n_types = len(PANNUKE_CLASSES)
    if images.ndim != 4 or masks.shape[:3] != images.shape[:3] or masks.shape[3] != n_types + 1:
        raise PretrainError(f"PanNuke fold {fold_dir}: images {images.shape} and masks {masks.shape} must be "
                            f"(N, H, W, 3) and (N, H, W, {n_types + 1})")
    parts, labels = [], []
    for i in range(len(images)):
        rgb = np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8)
        for t in range(n_types):
            xy = _instance_centroids(np.asarray(masks[i, :, :, t]))
            parts.append(patches_from_image(rgb, xy, patch_px, out_px))
            labels.append(np.full(len(xy), t, np.int64))
    patches = np.concatenate(parts) if parts else np.zeros((0, out_px, out_px, 3), np.uint8)
    return NucleusPatches(patches, np.concatenate(labels) if labels else np.zeros(0, np.int64), PANNUKE_CLASSES,
                          f"PanNuke {fold_dir}")


def _instance_centroids(instance_map: np.ndarray) -> np.ndarray:
    """(x, y) centres of mass, float (K, 2), of the non-zero instance ids of an (H, W) map, in id order."""
    ids = np.unique(instance_map)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros((0, 2))
    rows_cols = np.array(ndi.center_of_mass(np.ones_like(instance_map), instance_map, ids)).reshape(-1, 2)
    return rows_cols[:, ::-1]


def _find_one(root: Path, name: str) -> Path:
    found = sorted(Path(root).rglob(name))
    if len(found) != 1:
        raise PretrainError(f"expected one {name} under PanNuke fold {root}, found {len(found)}: {found[:3]}")
    return found[0]


def concat(parts: Sequence[NucleusPatches]) -> NucleusPatches:
    """The patches of several sources with the same classes, in order."""
    if any(p.classes != parts[0].classes for p in parts):
        raise PretrainError(f"cannot combine sources with different classes: {[p.classes for p in parts]}")
    return NucleusPatches(np.concatenate([p.patches for p in parts]), np.concatenate([p.labels for p in parts]),
                          parts[0].classes, " + ".join(p.source for p in parts))


@dataclass
class PretrainResult:
    """What :func:`pretrain_backbone` learned: the backbone ``state_dict`` (``fc`` dropped), the normalisation
    (RGB mean and std in [0, 1]) and per-epoch figures."""

    backbone_state: dict[str, torch.Tensor]
    mean: list[float]
    std: list[float]
    history: list[dict[str, float]] = field(default_factory=list)


def channel_stats(patches: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, 3) patches, scaled to [0, 1]."""
    x = patches.reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-6).tolist()


def pretrain_backbone(
    train: NucleusPatches, test: NucleusPatches | None, epochs: int = 5, batch_size: int = 128, lr: float = 1e-3,
    device: str = "cpu", random_state: int = 0, on_epoch: Callable[[PretrainResult], None] | None = None,
) -> PretrainResult:
    """Train a torchvision ResNet-18 (random init, ``fc`` -> K classes) with Adam and cross-entropy.

    Each batch is flipped and rotated by multiples of 90 degrees at random (nuclei have no orientation). The
    last epoch's weights are kept; the test split is only measured, never used to choose. ``on_epoch`` gets
    the result so far after every epoch (to log it, or to save it so that a time-boxed run keeps its work).
    """
    if len(train) == 0:
        raise PretrainError("no training patches; check the data source and --limit")
    torch.manual_seed(random_state)
    generator = torch.Generator().manual_seed(random_state)
    model = resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, len(train.classes))
    model.to(device)
    mean, std = channel_stats(train.patches)
    norm = (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    result = PretrainResult({}, mean, std)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss = _train_epoch(model, optimizer, train, norm, batch_size, device, generator)
        row = {"epoch": epoch, "train_loss": loss, "seconds": time.perf_counter() - t0}
        if test is not None and len(test):
            row.update(evaluate(model, test, norm, device))
        result.history.append(row)
        result.backbone_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                                 if not k.startswith("fc.")}
        if on_epoch:
            on_epoch(result)
    return result


def _train_epoch(model, optimizer, data: NucleusPatches, norm, batch_size: int, device: str, generator) -> float:
    model.train()
    order = torch.randperm(len(data), generator=generator).numpy()
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])
        x = _augment(_to_tensor(data.patches[idx], norm, device), generator)
        y = torch.from_numpy(data.labels[idx]).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / len(order)


def _to_tensor(patches: np.ndarray, norm, device: str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return (x - norm[0]) / norm[1]


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip % 2 else x


def evaluate(model: nn.Module, data: NucleusPatches, norm, device: str) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present) of ``model`` on ``data``."""
    model.eval()
    preds = []
    with torch.inference_mode():
        for start in range(0, len(data), _EVAL_BATCH):
            x = _to_tensor(data.patches[start : start + _EVAL_BATCH], norm, device)
            preds.append(model(x).argmax(1).cpu().numpy())
    pred = np.concatenate(preds)
    recalls = [np.mean(pred[data.labels == c] == c) for c in np.unique(data.labels)]
    return {"test_accuracy": float(np.mean(pred == data.labels)), "test_balanced_accuracy": float(np.mean(recalls))}


def save_backbone(out: Path, result: PretrainResult, meta: dict[str, Any]) -> Path:
    """Write the backbone ``state_dict`` to ``out`` and its sidecar to ``out.with_suffix('.json')``, each
    atomically (temporary file, then ``os.replace``), weights first. Returns the sidecar's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sidecar = out.with_suffix(".json")
    write_atomic(out, lambda f: torch.save(result.backbone_state, f))
    payload = {"format": SIDECAR_FORMAT, "architecture": "torchvision resnet18, fc removed", **meta,
               "mean": result.mean, "std": result.std, "history": result.history}
    if result.history:
        payload.update({k: v for k, v in result.history[-1].items() if k.startswith("test_")})
    text = json.dumps(payload, indent=2, sort_keys=True)
    write_atomic(sidecar, lambda f: f.write(text.encode()))
    return sidecar


def run_pretrain(
    out: Path, table: Path | None = None, images_dir: Path | None = None, class_column: str = "type_name",
    train_split: str = "train", test_split: str = "test", pannuke_train: Sequence[Path] = (),
    pannuke_test: Sequence[Path] = (), mpp: float = 0.25, patch_um: float = 20.0, epochs: int = 5,
    batch_size: int = 128, lr: float = 1e-3, device: str = "cpu", limit: int | None = None, random_state: int = 0,
) -> dict[str, Any]:
    """Load a centroid table or PanNuke folds, pretrain, save; returns the sidecar's contents."""
    if (table is None) == (not pannuke_train):
        raise PretrainError("give either a centroid table (--table) or PanNuke folds (--pannuke-train), not both")
    patch_px = cell_patch_px(mpp, patch_um)
    if table is not None:
        train = load_centroid_table(table, train_split, images_dir, class_column, patch_px=patch_px)
        test = load_centroid_table(table, test_split, images_dir, class_column, train.classes, patch_px)
    else:
        train = concat([load_pannuke_fold(d, patch_px) for d in pannuke_train])
        test = concat([load_pannuke_fold(d, patch_px) for d in pannuke_test]) if pannuke_test else None
    train, test = train.subset(limit, random_state), test.subset(limit, random_state + 1) if test else None
    logger.info("pretraining on %d patches (%s), testing on %d; classes %s", len(train), train.source,
                len(test) if test else 0, list(train.classes))
    meta = {"data": {"train": train.source, "test": test.source if test else None, "n_train": len(train),
                     "n_test": len(test) if test else 0},
            "classes": list(train.classes), "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "random_state": random_state, "patch_um": patch_um, "mpp": mpp, "patch_px": patch_px,
            "out_px": int(train.patches.shape[1])}

    def save(result: PretrainResult) -> None:  # after every epoch: stopping early keeps the last one
        sidecar = save_backbone(out, result, {**meta, "epochs": len(result.history)})
        logger.info("%s; wrote %s and %s", _fmt(result.history[-1]), out, sidecar)

    pretrain_backbone(train, test, epochs, batch_size, lr, device, random_state, on_epoch=save)
    return json.loads(out.with_suffix(".json").read_text())


def _fmt(row: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
