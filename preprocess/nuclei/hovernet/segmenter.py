"""``HoVerNetSegmenter``: nucleus instances of an RGB image of any size, from a HoVer-Net checkpoint.

The image is rescaled to the checkpoint's 0.25 um/px, reflect-padded, and cut into overlapping patches of
the model's input size whose outputs (its centre, ``output_px`` a side) tile the image exactly; patches are
run in batches, the output maps stitched, post-processed into instances once for the whole image (so
nuclei on patch borders are whole), and the label map is scaled back to the input's pixels.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import relabel_sequential
from skimage.transform import resize

from preprocess.errors import SegmentationError
from preprocess.nuclei.hovernet.postprocess import instance_types, instances_from_maps
from preprocess.nuclei.hovernet.weights import load_hovernet
from preprocess.nuclei.segment import Nuclei, nuclei_from_labels

logger = logging.getLogger(__name__)

TRAINED_MPP = 0.25  # published HoVer-Net checkpoints (CoNSeP, PanNuke, MoNuSAC, Kumar) are 40x
RESCALE_TOLERANCE = 0.05  # within 5 % of the trained scale the image is used as it is


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when there is a GPU, else CPU; ``"cpu"``/``"cuda"``/``"cuda:1"`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SegmentationError(f"device {device!r} asked for, but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return torch.device(device)


class HoVerNetSegmenter:
    """Nucleus segmentation with HoVer-Net weights; a drop-in for :func:`preprocess.nuclei.segment.label_nuclei`
    and :func:`preprocess.nuclei.segment.segment_nuclei`.

    ``weights``: a checkpoint in a layout :func:`preprocess.nuclei.hovernet.weights.load_hovernet` accepts.
    ``device``: "auto" (CUDA when available), "cpu" or "cuda". ``batch_size``: patches per forward pass.
    ``patch_px``: input patch side; default the mode's own (256 fast, 270 original). Larger patches waste
    less overlap but see more zero padding than in training; must be 8k (fast) or 8k + 6 (original).
    """

    def __init__(self, weights: Path, device: str = "auto", batch_size: int = 8, patch_px: int | None = None):
        self.device_ = resolve_device(device)
        self.model_ = load_hovernet(Path(weights), self.device_)
        spec = self.model_.spec
        self.patch_px = patch_px or spec.input_px
        self.margin_px = spec.margin_px
        self.output_px = self.patch_px - 2 * self.margin_px
        if self.output_px < 1 or (self.patch_px - spec.input_px) % 8:
            raise ValueError(f"patch_px {self.patch_px} does not fit {self.model_.mode} HoVer-Net: use "
                             f"{spec.input_px} + 8k, larger than {2 * self.margin_px}")
        self.batch_size = batch_size
        self.n_types_ = self.model_.n_types

    def label_nuclei(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """int32 (rows, cols) instance map of ``rgb`` (uint8 (rows, cols, 3) at ``mpp`` um/px), nuclei 1..N."""
        return self.label_and_type(rgb, mpp)[0]

    def segment_nuclei(self, rgb: np.ndarray, mpp: float) -> Nuclei:
        """:class:`Nuclei` of ``rgb`` in its own pixels (centroids, boxes, areas)."""
        return nuclei_from_labels(self.label_nuclei(rgb, mpp))

    def label_and_type(self, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray | None]:
        """(int32 (rows, cols) instance map, int32 (N,) type of nuclei 1..N or None without a type branch).

        Types are the checkpoint's classes (PanNuke: 1 neoplastic, 2 inflammatory, 3 connective,
        4 dead, 5 epithelial; 0 means no type won a pixel).
        """
        _check_input(rgb, mpp)
        scale = mpp / TRAINED_MPP
        rescale = abs(scale - 1.0) > RESCALE_TOLERANCE
        model_rgb = _rescale_rgb(rgb, scale) if rescale else rgb
        np_prob, hv, tp = self.predict_maps(model_rgb)
        labels = instances_from_maps(np_prob, hv)
        types = instance_types(labels, tp) if tp is not None else None
        if rescale:
            labels, types = _labels_back(labels, types, rgb.shape[:2])
        return labels, types

    def predict_maps(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Stitched model outputs over ``rgb`` (uint8 (rows, cols, 3) at the trained scale):
        float32 (rows, cols) nuclear probability, float32 (rows, cols, 2) HV maps, uint8 (rows, cols) type
        argmax or None."""
        rows, cols = rgb.shape[:2]
        n_rows, n_cols = math.ceil(rows / self.output_px), math.ceil(cols / self.output_px)
        m = self.margin_px
        padded = np.pad(rgb, ((m, n_rows * self.output_px - rows + m), (m, n_cols * self.output_px - cols + m),
                              (0, 0)), mode="reflect")
        origins = [(r * self.output_px, c * self.output_px) for r in range(n_rows) for c in range(n_cols)]
        shape = (n_rows * self.output_px, n_cols * self.output_px)
        np_prob, hv = np.zeros(shape, np.float32), np.zeros((*shape, 2), np.float32)
        tp = np.zeros(shape, np.uint8) if self.n_types_ else None
        for start in range(0, len(origins), self.batch_size):
            batch = origins[start : start + self.batch_size]
            out = self._infer([padded[y : y + self.patch_px, x : x + self.patch_px] for y, x in batch])
            for i, (y, x) in enumerate(batch):
                window = (slice(y, y + self.output_px), slice(x, x + self.output_px))
                np_prob[window], hv[window] = out["np"][i], out["hv"][i]
                if tp is not None:
                    tp[window] = out["tp"][i]
        return np_prob[:rows, :cols], hv[:rows, :cols], (tp[:rows, :cols] if tp is not None else None)

    def _infer(self, patches: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per-patch outputs: "np" (B, out, out) probability, "hv" (B, out, out, 2), "tp" (B, out, out) uint8."""
        x = torch.from_numpy(np.stack(patches)).to(self.device_).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            raw = self.model_(x)
            out = {"np": torch.softmax(raw["np"], dim=1)[:, 1], "hv": raw["hv"].permute(0, 2, 3, 1)}
            if "tp" in raw:
                out["tp"] = raw["tp"].argmax(dim=1).to(torch.uint8)
        return {k: v.cpu().numpy() for k, v in out.items()}


def _check_input(rgb: np.ndarray, mpp: float) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SegmentationError(f"HoVer-Net needs a uint8 (rows, cols, 3) RGB image, got {rgb.dtype} {rgb.shape}")
    if not mpp > 0:
        raise SegmentationError(f"mpp {mpp!r} must be > 0; pass the image's microns per pixel, e.g. 0.5 for 20x")


def _rescale_rgb(rgb: np.ndarray, scale: float) -> np.ndarray:
    """uint8 ``rgb`` resized by ``scale`` (> 1 enlarges), bilinear, anti-aliased when shrinking."""
    shape = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
    out = resize(rgb, shape, order=1, preserve_range=True, anti_aliasing=scale < 1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _labels_back(labels: np.ndarray, types: np.ndarray | None, shape: tuple[int, int]):
    """Nearest-neighbour resize of ``labels`` to ``shape``, renumbered 1..N with ``types`` following."""
    small = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    relabelled, forward, _ = relabel_sequential(small)
    if types is not None:
        kept = np.unique(small[small > 0])
        new_types = np.zeros(int(relabelled.max()), np.int32)
        new_types[forward[kept] - 1] = types[kept - 1]
        types = new_types
    return relabelled.astype(np.int32), types
