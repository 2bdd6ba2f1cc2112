"""``cellnet``: a compact CNN trained to tell apart the boxes of the product's segmenter on H&E.

The CNN (:class:`CellNet`, about 0.1 M parameters) was trained on CoNSeP's **train** images
(``python -m preprocess.features.cellnet_train``; the command, data and licence are in
``weights/README.md`` and the sidecar). It sees what preprocessing shows an annotator: the boxes of the
product's own segmenter, each labelled with the class of the ground-truth nucleus within 3 um, or
"not a nucleus" when there is none. A cell's features are the CNN's penultimate layer (``embed_dim`` values)
and its class log-probabilities. At a few hundred labels they describe a cell far better than colour and
shape (docs/features.md, "cellnet"); the classifier of each project still learns its own classes on top,
so the CNN's classes only shape the feature space.

:class:`CellNetFeaturizer` cuts one patch of ``patch_um`` micrometres per cell, resized to ``input_px``
(20 um to 40 px, 0.5 um/px, for the packaged weights).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from preprocess.errors import FeaturizerError
from preprocess.features.encoder import embed_in_batches
from preprocess.features.weights_file import load_weights_file

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "cellnet_consep.pt"


def _block(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class CellNet(nn.Module):
    """Four conv stages (``width``, 2x, 4x, 4x channels; three 2x poolings), global average pooling, a linear
    ``embed_dim`` embedding, then ReLU, dropout and a linear layer to ``n_classes`` logits.

    Input: float32 (B, 3, px, px), RGB normalised with the training mean/std; any ``px`` >= 8.
    """

    def __init__(self, width: int = 16, embed_dim: int = 32, n_classes: int = 5, dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(3, w, 1), nn.MaxPool2d(2), _block(w, 2 * w, 2), nn.MaxPool2d(2), _block(2 * w, 4 * w, 2),
            nn.MaxPool2d(2), _block(4 * w, 4 * w, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, embed_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(embed_dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class CellNetSpec:
    """What a weights file needs beside it (its JSON sidecar): the architecture, the classes it was trained on,
    the patch geometry and the RGB normalisation (0..1 scale)."""

    width: int
    embed_dim: int
    classes: tuple[str, ...]
    patch_um: float
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_sidecar(cls, sidecar: dict) -> CellNetSpec:
        return cls(int(sidecar["width"]), int(sidecar["embed_dim"]), tuple(sidecar["classes"]),
                   float(sidecar["patch_um"]), int(sidecar["input_px"]), tuple(sidecar["mean"]), tuple(sidecar["std"]))

    def sidecar(self) -> dict:
        return {"width": self.width, "embed_dim": self.embed_dim, "classes": list(self.classes),
                "patch_um": self.patch_um, "input_px": self.input_px, "mean": list(self.mean), "std": list(self.std)}


def load_cellnet(weights: Path = DEFAULT_WEIGHTS) -> tuple[CellNet, CellNetSpec]:
    """The network in ``weights`` (a float16 or float32 ``state_dict``) and its sidecar, in eval mode, float32."""
    weights = Path(weights)
    sidecar = weights.with_suffix(".json")
    try:
        spec = CellNetSpec.from_sidecar(json.loads(sidecar.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FeaturizerError(f"cannot read {sidecar}, the sidecar of {weights}: {err}; both are written by "
                              "python -m preprocess.features.cellnet_train") from err
    state = load_weights_file(weights, lambda reason: FeaturizerError(
        f"cellnet weights {weights} {reason}; reinstall the package or retrain with "
        "python -m preprocess.features.cellnet_train"))
    model = CellNet(spec.width, spec.embed_dim, len(spec.classes))
    try:
        model.load_state_dict({k: v.float() for k, v in dict(state).items()})
    except (RuntimeError, AttributeError, TypeError) as err:
        raise FeaturizerError(f"cellnet weights {weights} do not fit the architecture in {sidecar}: {err}") from err
    return model.eval(), spec


def weights_digest(weights: Path) -> str:
    """12 hex characters of the weights file's SHA-1 (``missing`` when unreadable): cached tables made with other
    weights are redone."""
    weights = Path(weights)
    try:
        stat = weights.stat()
    except OSError:
        return "missing"
    return _digest(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


class CellNetFeaturizer:
    """uint8 RGB patches of ``patch_um`` micrometres -> float32 (N, dim): the CNN's ``embed_dim`` embedding and
    its ``len(classes)`` class log-probabilities."""

    name = "cellnet"

    def __init__(self, weights: Path = DEFAULT_WEIGHTS, batch_size: int = 512) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self._model, self.spec = load_cellnet(weights)
        self._batch_size = batch_size
        self.patch_um = self.spec.patch_um
        self.patch_out_px = self.spec.input_px
        self.dim = self.spec.embed_dim + len(self.spec.classes)
        self._mean = torch.tensor(self.spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, dtype=torch.float32).view(1, 3, 1, 1)

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Features of uint8 (N, input_px, input_px, 3) RGB patches: float32 (N, :attr:`dim`)."""
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[1:] != (self.patch_out_px, self.patch_out_px, 3):
            raise ValueError(f"patches must be uint8 (N, {self.patch_out_px}, {self.patch_out_px}, 3) RGB, "
                             f"got {patches.dtype} {patches.shape}")
        return embed_in_batches(patches, self.dim, self._batch_size, self._forward)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255.0
        emb = self._model.features((x - self._mean) / self._std)
        log_p = torch.log_softmax(self._model.head(emb), dim=1)
        return torch.cat([emb, log_p], dim=1).numpy()
