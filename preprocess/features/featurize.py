"""Cell patches and their embeddings.

:func:`extract_patches` cuts a square of level-0 pixels around each cell centroid and resizes it;
:class:`ResNet18Featurizer` turns patches into 512-d embeddings with a torchvision ResNet-18 whose
classifier is removed. ``ml_backend`` reuses both to embed a cell an annotator draws by hand, so the
same patch gives the same embedding in every process: a random-init backbone is seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from preprocess.errors import FeaturizerError
from preprocess.features.cellnet import DEFAULT_WEIGHTS as DEFAULT_CELLNET_WEIGHTS
from preprocess.features.cellnet import CellNetFeaturizer
from preprocess.features.encoder import EncoderFeaturizer, embed_in_batches
from preprocess.features.handcrafted import HandcraftedFeaturizer
from preprocess.features.weights_file import load_weights_file, sidecar_normalisation

if TYPE_CHECKING:  # slides are read through the reader the caller passes in
    from adapters.slide_reader import OpenSlideReader

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_READ_BLOCK_PX = 1024
_STRIPPED_PREFIXES = ("module.", "backbone.")
_WRAPPER_KEYS = ("state_dict", "model")
_RANDOM_INIT_SEED = 0


def cell_patch_px(mpp: float | None, patch_um: float = 20.0, default_px: int = 40) -> int:
    """Side in level-0 pixels of a ``patch_um``-micron patch; ``default_px`` when mpp is unknown."""
    if mpp is None:
        return default_px
    return max(8, round(patch_um / mpp))


def extract_patches(reader: OpenSlideReader, centroids_xy: np.ndarray, patch_px: int, out_px: int = 40) -> np.ndarray:
    """Square patches centred on cells, resized: uint8 (N, out_px, out_px, 3) RGB.

    ``centroids_xy``: float (N, 2) level-0 (x, y). Patch ``i`` covers ``patch_px`` level-0 pixels a side
    from ``(round(x) - patch_px // 2, round(y) - patch_px // 2)``; area beyond the slide is white.
    Cells are read a block of slide at a time, which gives the same pixels as one read per cell.
    """
    xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    origins = np.floor(xy + 0.5).astype(np.int64) - patch_px // 2
    patches = np.empty((len(xy), out_px, out_px, 3), np.uint8)
    for members in _group_by_block(origins, _READ_BLOCK_PX):
        x0, y0 = origins[members].min(axis=0)
        x1, y1 = origins[members].max(axis=0) + patch_px
        region = reader.read_region(int(x0), int(y0), int(x1 - x0), int(y1 - y0))
        for i in members:
            dx, dy = origins[i] - (x0, y0)
            patches[i] = _resize(region[dy : dy + patch_px, dx : dx + patch_px], out_px)
    return patches


def _group_by_block(origins: np.ndarray, block_px: int) -> list[np.ndarray]:
    """Indices into ``origins`` (int (N, 2)) grouped by the ``block_px`` square each one starts in."""
    _, block = np.unique(np.floor_divide(origins, block_px), axis=0, return_inverse=True)
    block = block.reshape(-1)
    order = np.argsort(block, kind="stable")
    return np.split(order, np.cumsum(np.bincount(block))[:-1]) if len(order) else []


def _resize(patch: np.ndarray, out_px: int) -> np.ndarray:
    if patch.shape[0] == out_px and patch.shape[1] == out_px:
        return patch
    return np.asarray(Image.fromarray(patch).resize((out_px, out_px), Image.Resampling.BILINEAR))


class ResNet18Featurizer:
    """ResNet-18 without its classifier: uint8 RGB patches -> float32 (N, 512) embeddings.

    ``checkpoint``: a ``state_dict`` file (plain, or under a ``"state_dict"``/``"model"`` key; ``module.``
    and ``backbone.`` prefixes and ``fc.*`` keys are accepted). Without one the weights are random
    (seeded, so every process gets the same ones) and a warning says so. When a JSON sidecar sits beside
    the checkpoint (``resnet18.pt`` -> ``resnet18.json``, as ``hali pretrain`` writes) and holds ``mean``
    and ``std`` (3 floats each, RGB in [0, 1]), patches are normalised with those instead of ImageNet's.
    """

    dim = 512
    patch_out_px = 40

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", batch_size: int = 256) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self._device = torch.device(device)
        self._batch_size = batch_size
        self._model = _build_backbone()
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if checkpoint is None:
            logger.warning(
                "no backbone checkpoint given: ResNet-18 has RANDOM weights; suggestions will be weak until "
                "`hali pretrain` (pass --checkpoint)"
            )
            self._name = "resnet18:random-init"
        else:
            path = Path(checkpoint)
            self._model.load_state_dict(_read_checkpoint(path, self._model.state_dict()))
            self._name = f"resnet18:{path.name}"
            mean, std = sidecar_normalisation(path) or (mean, std)
        self._model.to(self._device).eval()
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)

    @property
    def name(self) -> str:
        """``resnet18:random-init`` or ``resnet18:<checkpoint file name>``."""
        return self._name

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 (N, H, W, 3) RGB patches: float32 (N, 512)."""
        return embed_in_batches(patches, self.dim, self._batch_size, self._embed_batch)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
        x = (x.permute(0, 3, 1, 2).float() / 255.0 - self._mean) / self._std
        return self._model(x).float().cpu().numpy()


def _build_backbone() -> nn.Module:
    """torchvision ResNet-18, ``fc`` replaced by identity, initialised from a fixed seed."""
    from torchvision.models import resnet18  # here, not at the top: importing torchvision costs a worker 170 MB

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        model = resnet18(weights=None)
    model.fc = nn.Identity()
    return model


def _read_checkpoint(path: Path, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone weights in ``path``, keyed as ``expected``; :class:`FeaturizerError` if they do not fit."""
    loaded = load_weights_file(path, lambda reason: FeaturizerError(
        f"backbone checkpoint {path} {reason}; check --checkpoint: it takes a weights-only torch file of a "
        "ResNet-18 state_dict, torch.save(model.state_dict(), path), as `hali pretrain` writes"))
    state = _normalise_keys(_unwrap(loaded, path))
    _check_keys(path, state, expected)
    # BatchNorm step counters do not change outputs; fill them in for checkpoints saved without them.
    return {key: state.get(key, value) for key, value in expected.items()}


def _unwrap(loaded: object, path: Path) -> Mapping[str, object]:
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return loaded[key]
        return loaded
    raise FeaturizerError(
        f"backbone checkpoint {path} holds a {type(loaded).__name__}, not a state_dict; "
        "save it with torch.save(model.state_dict(), path)"
    )


def _normalise_keys(state: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in state.items():
        while key.startswith(_STRIPPED_PREFIXES):
            key = key.split(".", 1)[1]
        if not key.startswith("fc."):
            out[key] = value
    return out


def _check_keys(path: Path, state: Mapping[str, object], expected: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        k for k in expected
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise FeaturizerError(
            f"backbone checkpoint {path} does not fit ResNet-18: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, {len(mismatched)} keys of the wrong shape "
            f"{mismatched[:5]}; pass a torchvision resnet18 state_dict or a checkpoint from `hali pretrain`"
        )


FEATURIZERS = ("cellnet", "handcrafted", "resnet18", "encoder")
Featurizer = CellNetFeaturizer | ResNet18Featurizer | HandcraftedFeaturizer | EncoderFeaturizer


def patch_um_of(featurizer: object, default: float) -> float:
    """Side in micrometres of the patch ``featurizer`` reads: its own (``cellnet``'s weights fix it, the
    handcrafted measurements are told it), else ``default`` (the ``patch_um`` setting)."""
    return float(getattr(featurizer, "patch_um", default))


def make_featurizer(
    name: str, checkpoint: str | Path | None = None, device: str = "cpu", patch_um: float = 20.0,
    encoder: str | None = None, encoder_input_px: int = 224,
) -> Featurizer:
    """The featurizer registered as ``name`` (one of :data:`FEATURIZERS`); each has ``embed``, ``dim``, ``name``
    and ``patch_out_px`` (the side patches are cut to).

    ``checkpoint`` is the weights of ``cellnet`` (default: the packaged CoNSeP ones), the ResNet-18 or the
    encoder; ``device`` goes to the ResNet-18 or the encoder; ``patch_um`` to the handcrafted
    measurements, which need no weights and give a fresh install useful features; ``encoder`` (e.g.
    ``timm:vit_small_patch16_224``) and ``encoder_input_px`` name the pluggable encoder.
    """
    if name == "cellnet":
        return CellNetFeaturizer(Path(checkpoint) if checkpoint else DEFAULT_CELLNET_WEIGHTS)
    if name == "resnet18":
        return ResNet18Featurizer(checkpoint, device=device)
    if name == "handcrafted":
        if checkpoint is not None:
            logger.warning("featurizer 'handcrafted' needs no weights; ignoring checkpoint %s", checkpoint)
        return HandcraftedFeaturizer(patch_um=patch_um)
    if name == "encoder":
        if not encoder:
            raise FeaturizerError("featurizer 'encoder' needs HALI_ENCODER, e.g. timm:vit_small_patch16_224")
        return EncoderFeaturizer(encoder, checkpoint, device=device, input_px=encoder_input_px)
    raise FeaturizerError(f"unknown featurizer {name!r}; choose one of {', '.join(FEATURIZERS)}")
