"""Learned nucleus segmentation: a small U-Net trained on CoNSeP, then a marker-controlled watershed.

The image is resampled to :data:`WORKING_MPP` (0.5 um/px; a 20x slide is used as it is), run through
:class:`~preprocess.nuclei.unet.NucleusUNet` in tiles, and its two maps are resampled back to the image's
pixels: the probability that a pixel is nuclear, and each nuclear pixel's distance to its nucleus' edge over
that nucleus' largest distance. Nuclear pixels are those above ``foreground``; each connected set of pixels
above ``core`` in the distance map is one nucleus' marker, and a watershed on the distance map grows the
markers over the nuclear pixels. Because the distance is normalised per nucleus, a large nucleus has one
peak, not several. Objects whose mean colour is not haematoxylin-like (black pigment, ink, blue or green
dye: :func:`artefact_mask`) are dropped.

:func:`label_nuclei_learned` (instance map) and :func:`segment_nuclei_learned` (:class:`Nuclei`) have the
contract of :func:`preprocess.nuclei.segment.label_nuclei` and :func:`preprocess.nuclei.segment.segment_nuclei`, so either
is a ``Segmenter``. Weights: ``preprocess/nuclei/weights/nuclei_unet_consep.pt`` (float16 ``state_dict``) and its
JSON sidecar (architecture, post-processing thresholds, metrics, provenance).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from preprocess.errors import SegmenterWeightsError
from preprocess.nuclei.segment import Nuclei, check_input, nuclei_from_labels
from preprocess.nuclei.unet import NucleusUNet

logger = logging.getLogger(__name__)

WORKING_MPP = 0.5
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "nuclei_unet_consep.pt"
TILE_PX = 1024  # working pixels per forward pass: bounds memory (~0.4 GB) on any window size
CONTEXT_PX = 32  # working pixels of context each side of a tile
RESAMPLE_TOLERANCE = 0.05  # an image within 5 % of the working scale is used unresampled
MAX_AREA_UM2 = 400.0
DAB_TO_HAEMATOXYLIN = 1.0  # IHC: the share of DAB optical density shown to the model as haematoxylin
# Artefact colours, from the mean RGB (0..255) of an object; CoNSeP nuclei lie far from all three.
# On CoNSeP (28,546 nuclei) the darkest nucleus has max(R, G, B) 94, the bluest blue/red 2.42, and green is
# always at least 10 below red or blue.
BLACK_MAX_RGB = 70.0  # black pigment, black ink: every channel this dark ...
BLACK_MAX_SATURATION = 0.45  # ... and grey, (max - min) / max, unlike dark-brown DAB
INK_MIN_BLUE_OVER_RED = 3.0  # blue dye / blue ink: blue far stronger than red (haematoxylin is purple) ...
# ... and bright: the darkest haematoxylin of the 20x Aperio demo slide is navy, (15, 12, 50), blue/red > 3
INK_MIN_BLUE = 100.0
INK_MIN_GREEN_LEAD = 10.0  # green ink / dye: green above both red and blue (never so in H&E)


@dataclass(frozen=True)
class Postprocess:
    """Thresholds of the maps -> instances step: ``foreground`` on the nuclear probability, ``core`` on the
    normalised distance (markers), and the smallest nucleus kept, in um^2.

    ``marker_h`` 0: a marker is each connected set of pixels whose distance exceeds ``core``. ``marker_h`` > 0:
    a marker is each regional maximum of the distance map that rises at least ``marker_h`` above the saddle
    joining it to a higher one (h-maxima) and exceeds ``core``, so two touching nuclei whose distance dips
    only a little between them still get one marker each.
    """

    foreground: float = 0.5
    core: float = 0.5
    min_area_um2: float = 3.0
    marker_h: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_POSTPROCESS = Postprocess()


def resample_rgb(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 (rows, cols, 3) ``rgb`` resized to ``shape`` (rows, cols), antialiased bilinear."""
    if rgb.shape[:2] == tuple(shape):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.BILINEAR))


def predict_maps(model: NucleusUNet, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """(nuclear probability, normalised distance), float32 (rows, cols) each, in ``rgb``'s own pixels."""
    rows, cols = rgb.shape[:2]
    factor = mpp / WORKING_MPP
    if abs(factor - 1) <= RESAMPLE_TOLERANCE:
        factor = 1.0
    work = resample_rgb(rgb, (max(1, round(rows * factor)), max(1, round(cols * factor))))
    maps = _predict_tiled(model, work)
    if maps.shape[1:] != (rows, cols):
        maps = torch.nn.functional.interpolate(torch.from_numpy(maps)[None], size=(rows, cols), mode="bilinear",
                                               align_corners=False)[0].numpy()
    return maps[0], maps[1]


def _predict_tiled(model: NucleusUNet, rgb: np.ndarray) -> np.ndarray:
    """float32 (2, rows, cols) sigmoid outputs for uint8 ``rgb``, in tiles of :data:`TILE_PX` with context."""
    rows, cols = rgb.shape[:2]
    padded = np.pad(rgb, ((CONTEXT_PX, CONTEXT_PX), (CONTEXT_PX, CONTEXT_PX), (0, 0)), mode="reflect")
    out = np.zeros((2, rows, cols), np.float32)
    for y0 in range(0, rows, TILE_PX):
        for x0 in range(0, cols, TILE_PX):
            h, w = min(TILE_PX, rows - y0), min(TILE_PX, cols - x0)
            tile = padded[y0:y0 + h + 2 * CONTEXT_PX, x0:x0 + w + 2 * CONTEXT_PX]
            out[:, y0:y0 + h, x0:x0 + w] = _forward(model, tile)[:, CONTEXT_PX:CONTEXT_PX + h,
                                                                   CONTEXT_PX:CONTEXT_PX + w]
    return out


def _forward(model: NucleusUNet, rgb: np.ndarray) -> np.ndarray:
    """float32 (2, rows, cols) sigmoid outputs of one uint8 tile, reflect-padded to the model's stride."""
    rows, cols = rgb.shape[:2]
    pad_r, pad_c = -rows % model.stride, -cols % model.stride
    rgb = np.pad(rgb, ((0, pad_r), (0, pad_c), (0, 0)), mode="reflect" if min(rows, cols) > 1 else "edge")
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float().div_(255.0)
    with torch.inference_mode():
        out = torch.sigmoid(model(x.contiguous(memory_format=torch.channels_last)))
    return out[0, :, :rows, :cols].numpy()


def labels_from_maps(fg_prob: np.ndarray, distance: np.ndarray, rgb: np.ndarray, mpp: float,
                     post: Postprocess = DEFAULT_POSTPROCESS) -> np.ndarray:
    """int32 (rows, cols) instance map, 0 background and nuclei 1..N, from the two maps of ``rgb``.

    Markers: see :class:`Postprocess`. Connected nuclear pixels without a marker of their own become one
    nucleus. Objects under ``post.min_area_um2`` or over :data:`MAX_AREA_UM2`, and artefact-coloured ones, are dropped.
    """
    foreground = fg_prob > post.foreground
    cores = foreground & (distance > post.core)
    if post.marker_h > 0:
        levels = np.round(np.where(foreground, np.clip(distance, 0, 1), 0) * 255).astype(np.uint8)
        cores &= h_maxima(levels, max(1, round(post.marker_h * 255))).astype(bool)  # 1/255 steps; faster than float
    markers, n_cores = ndi.label(cores)
    blobs, n_blobs = ndi.label(foreground)
    if n_blobs == 0:
        return np.zeros(fg_prob.shape, np.int32)
    unmarked = foreground & ~np.isin(blobs, np.unique(blobs[cores]))
    markers[unmarked] = blobs[unmarked] + n_cores
    labels = watershed(-distance, markers, mask=foreground)
    return _keep(labels, rgb, post.min_area_um2 / mpp**2, MAX_AREA_UM2 / mpp**2)


def _keep(labels: np.ndarray, rgb: np.ndarray, min_area_px: float, max_area_px: float) -> np.ndarray:
    """int32 ``labels`` with objects of the wrong size or colour removed and the rest numbered 1..N."""
    flat = labels.ravel()
    areas = np.bincount(flat)
    means = np.stack([np.bincount(flat, weights=rgb[..., c].ravel(), minlength=len(areas)) for c in range(3)], 1)
    means /= np.maximum(areas, 1)[:, None]
    keep = (areas >= min_area_px) & (areas <= max_area_px) & ~artefact_mask(means)
    keep[0] = False
    lookup = np.zeros(len(areas), np.int32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1)
    return lookup[labels]


def artefact_mask(mean_rgb: np.ndarray) -> np.ndarray:
    """bool (N,): objects whose mean colour, float (N, 3) RGB 0..255, is black pigment/ink or blue/green dye."""
    r, g, b = mean_rgb.T
    brightest = mean_rgb.max(axis=1)
    saturation = (brightest - mean_rgb.min(axis=1)) / np.maximum(brightest, 1.0)
    black = (brightest < BLACK_MAX_RGB) & (saturation < BLACK_MAX_SATURATION)
    blue = (b > INK_MIN_BLUE_OVER_RED * np.maximum(r, 1.0)) & (b >= INK_MIN_BLUE)
    green = g > np.maximum(r, b) + INK_MIN_GREEN_LEAD
    return black | blue | green


class LearnedSegmenter:
    """A trained :class:`NucleusUNet` with its post-processing; ``label_nuclei`` / ``segment_nuclei`` are
    ``Segmenter``-shaped: ``(uint8 RGB (rows, cols, 3), mpp) -> ...``."""

    def __init__(self, weights: Path = DEFAULT_WEIGHTS) -> None:
        self.weights = Path(weights)
        self.sidecar = _read_sidecar(self.weights)
        self.model = NucleusUNet(tuple(self.sidecar["channels"]))
        try:
            self.model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as err:
            raise SegmenterWeightsError(f"cannot load nucleus U-Net weights {self.weights}: {err}; "
                                        "retrain with python -m preprocess.nuclei.learned_train") from err
        self.model = self.model.eval().fuse_batchnorm().to(memory_format=torch.channels_last)
        self.post = Postprocess(**self.sidecar["postprocess"])

    def label_nuclei(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """int32 (rows, cols) instance map of ``rgb`` (uint8 (rows, cols, 3) at ``mpp`` um/px): 0 background, 1..N."""
        check_input(rgb, mpp)
        return labels_from_maps(*predict_maps(self.model, rgb, mpp), rgb, mpp, self.post)

    def segment_nuclei(self, rgb: np.ndarray, mpp: float) -> Nuclei:
        """:class:`Nuclei` of ``rgb`` in its own pixels."""
        return nuclei_from_labels(self.label_nuclei(rgb, mpp))


def _read_sidecar(weights: Path) -> dict:
    sidecar = weights.with_suffix(".json")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise SegmenterWeightsError(f"cannot read {sidecar} (the sidecar of {weights}): {err}; "
                                    "weights and sidecar are written together by python -m preprocess.nuclei.learned_train"
                                    ) from err


@functools.lru_cache(maxsize=1)
def load_default_model() -> LearnedSegmenter:
    """The packaged CoNSeP model (loaded once per process)."""
    return LearnedSegmenter(DEFAULT_WEIGHTS)


def dab_as_haematoxylin(rgb: np.ndarray, dab_weight: float = DAB_TO_HAEMATOXYLIN) -> np.ndarray:
    """uint8 (rows, cols, 3): an IHC image re-stained so brown DAB-positive nuclei look haematoxylin-blue.

    Colour deconvolution (Ruifrok & Johnston, skimage's HED matrix): ``dab_weight`` x the DAB optical density
    is moved into the haematoxylin channel and the image rebuilt from H (and E) alone, so the H&E-trained
    model sees Ki-67-positive nuclei as the dark nuclei it was trained on.
    """
    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)
    hed = od.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)
    hed[:, 0] += dab_weight * np.maximum(hed[:, 2], 0.0)
    hed[:, 2] = 0.0
    out = 255.0 * np.exp(-(hed @ rgb_from_hed.astype(np.float32)))
    return np.clip(out, 0, 255).reshape(rgb.shape).astype(np.uint8)


def label_nuclei_learned_ihc(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """:func:`label_nuclei_learned` for DAB IHC (e.g. Ki-67): run on :func:`dab_as_haematoxylin` of ``rgb``;
    the artefact filter sees the original colours."""
    check_input(rgb, mpp)
    model = load_default_model()
    return labels_from_maps(*predict_maps(model.model, dab_as_haematoxylin(rgb), mpp), rgb, mpp, model.post)


def label_nuclei_learned(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """int32 (rows, cols) instance map of the nuclei in uint8 RGB ``rgb`` at ``mpp`` um/px, by the packaged model."""
    return load_default_model().label_nuclei(rgb, mpp)


def segment_nuclei_learned(rgb: np.ndarray, mpp: float) -> Nuclei:
    """:class:`Nuclei` of uint8 RGB ``rgb`` at ``mpp`` um/px, by the packaged model."""
    return load_default_model().segment_nuclei(rgb, mpp)
