"""A pluggable frozen encoder: any torchvision or timm backbone, with weights from a local checkpoint.

A lab that has pathology-pretrained weights (a timm ViT, a torchvision ResNet-50, ...) names the architecture
and the file; HALI never downloads anything::

    HALI_FEATURIZER=encoder HALI_ENCODER=timm:vit_small_patch16_224 HALI_CHECKPOINT=/models/path-vit-s.pth
    HALI_FEATURIZER=encoder HALI_ENCODER=torchvision:resnet50      HALI_CHECKPOINT=/models/r50-histo.pt

The classifier of the architecture is removed (timm: ``num_classes=0``; torchvision: the last ``fc``,
``classifier`` or ``heads`` layer becomes the identity), so :meth:`EncoderFeaturizer.embed` returns the
pooled features, float32 (N, dim), ``dim`` read from one forward pass. Patches are resized to
``input_px`` (224 for most encoders) and normalised with ImageNet's mean and std, or with ``mean``/``std``
from a JSON sidecar beside the checkpoint (``model.pt`` -> ``model.json``), as ``hali pretrain`` writes.
Checkpoint keys may be wrapped (``state_dict``/``model``) and prefixed (``module.``, ``backbone.``); head
keys are dropped. A checkpoint of another architecture is refused with the keys that do not fit.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from preprocess.errors import FeaturizerError
from preprocess.features.weights_file import load_weights_file, sidecar_normalisation

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("torchvision", "timm")
_HEAD_ATTRS = ("fc", "classifier", "heads", "head")
_STRIPPED_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "student")


def parse_encoder_spec(spec: str) -> tuple[str, str]:
    """``"timm:vit_small_patch16_224"`` -> ``("timm", "vit_small_patch16_224")``; FeaturizerError if malformed."""
    source, _, arch = str(spec).partition(":")
    if source not in SOURCES or not arch:
        raise FeaturizerError(
            f"encoder {spec!r} must be <source>:<architecture> with source one of {', '.join(SOURCES)}, e.g. "
            "timm:vit_small_patch16_224 or torchvision:resnet50 (HALI_ENCODER)"
        )
    return source, arch


def build_encoder(spec: str) -> nn.Module:
    """The architecture ``spec`` names, random weights, classifier removed (no download)."""
    source, arch = parse_encoder_spec(spec)
    if source == "timm":
        if importlib.util.find_spec("timm") is None:
            raise FeaturizerError(f"encoder {spec!r} needs timm: pip install 'hali[encoders]' (or pip install timm)")
        import timm  # optional dependency: only an encoder from timm needs it

        try:
            return timm.create_model(arch, pretrained=False, num_classes=0)
        except RuntimeError as exc:  # timm's "Unknown model"
            raise FeaturizerError(f"timm has no architecture {arch!r} ({exc}); see timm.list_models()") from exc
    import torchvision.models

    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as exc:
        raise FeaturizerError(f"torchvision has no architecture {arch!r}; see torchvision.models.list_models()") \
            from exc
    return _strip_head(model, spec)


def _strip_head(model: nn.Module, spec: str) -> nn.Module:
    for attr in _HEAD_ATTRS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Identity()
            return model
    raise FeaturizerError(f"encoder {spec!r}: no fc/classifier/heads layer to remove; use a timm model instead")


class EncoderFeaturizer:
    """A frozen encoder from a local checkpoint: uint8 RGB patches -> float32 (N, :attr:`dim`) features."""

    def __init__(self, spec: str, checkpoint: str | Path | None, device: str = "cpu", input_px: int = 224,
                 batch_size: int = 64) -> None:
        if checkpoint is None:
            raise FeaturizerError(
                f"encoder {spec!r} needs its weights: pass --checkpoint (HALI_CHECKPOINT) with a state_dict file; "
                "HALI never downloads weights"
            )
        if input_px < 16 or batch_size < 1:
            raise FeaturizerError(f"input_px {input_px} must be >= 16 and batch_size {batch_size} >= 1")
        path = Path(checkpoint)
        self._model = build_encoder(spec)
        self._model.load_state_dict(_read_checkpoint(path, self._model.state_dict(), spec))
        self._device = torch.device(device)
        self._model.to(self._device).eval()
        self.patch_out_px = input_px
        self._batch_size = batch_size
        mean, std = _normalisation(path)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self._device).view(1, 3, 1, 1)
        self.name = f"encoder:{spec}:{path.name}"
        with torch.inference_mode():
            self.dim = int(self._forward(np.zeros((1, input_px, input_px, 3), np.uint8)).shape[1])
        logger.info("encoder %s from %s: %d features per cell, %d px input", spec, path, self.dim, input_px)

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Features of uint8 (N, H, W, 3) RGB patches (any H, W: resized to ``input_px``): float32 (N, dim)."""
        return embed_in_batches(patches, self.dim, self._batch_size, self._forward)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.patch_out_px or x.shape[-2] != self.patch_out_px:
            x = F.interpolate(x, size=(self.patch_out_px, self.patch_out_px), mode="bilinear", align_corners=False)
        y = self._model((x - self._mean) / self._std)
        return y.flatten(1).float().cpu().numpy()


def embed_in_batches(patches: np.ndarray, dim: int, batch_size: int,
                     forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float32 (N, dim): ``forward`` over uint8 (N, H, W, 3) RGB ``patches``, ``batch_size`` at a time, no grad."""
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[3] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"patches must be uint8 (N, H, W, 3) RGB, got {patches.dtype} {patches.shape}")
    out = np.empty((len(patches), dim), np.float32)
    with torch.inference_mode():
        for start in range(0, len(patches), batch_size):
            batch = patches[start : start + batch_size]
            out[start : start + len(batch)] = forward(batch)
    return out


def _normalisation(checkpoint: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return sidecar_normalisation(checkpoint) or (IMAGENET_MEAN, IMAGENET_STD)


def _read_checkpoint(path: Path, expected: Mapping[str, torch.Tensor], spec: str) -> dict[str, torch.Tensor]:
    loaded = load_weights_file(path, lambda reason: FeaturizerError(
        f"encoder checkpoint {path} {reason}; pass a weights-only torch file of the {spec} state_dict, "
        "torch.save(model.state_dict(), path)"))
    state = _unwrap(loaded, path)
    kept = {}
    for key, value in state.items():
        while key.startswith(_STRIPPED_PREFIXES):
            key = key.split(".", 1)[1]
        if key not in expected and key.split(".", 1)[0] in _HEAD_ATTRS:
            continue  # the classifier we removed
        kept[key] = value
    missing = [k for k in expected if k not in kept and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in kept if k not in expected]
    wrong = [k for k in expected if k in kept and getattr(kept[k], "shape", None) != expected[k].shape]
    if missing or unexpected or wrong:
        raise FeaturizerError(
            f"encoder checkpoint {path} does not fit {spec}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} keys of the wrong shape {wrong[:3]}; "
            "check HALI_ENCODER names the architecture the weights were trained with"
        )
    return {key: kept.get(key, value) for key, value in expected.items()}


def _unwrap(loaded: object, path: Path) -> Mapping[str, object]:
    if not isinstance(loaded, Mapping):
        raise FeaturizerError(f"encoder checkpoint {path} holds a {type(loaded).__name__}, not a state_dict; "
                              "save it with torch.save(model.state_dict(), path)")
    for key in _WRAPPER_KEYS:
        if isinstance(loaded.get(key), Mapping):
            return loaded[key]
    return loaded
