"""Load HoVer-Net checkpoints in the layouts users hold, and tell them plainly when a file is something else.

Accepted layouts (all read with ``torch.load(weights_only=True)``, so no pickled code ever runs):

- the original repository's (vqdang/hover_net): ``{"desc": state_dict, ...}``, keys possibly prefixed with
  ``module.`` (saved from ``DataParallel``); this covers its PanNuke (fast, 6 types), MoNuSAC (fast, 5),
  CoNSeP (original, 5) and segmentation-only (no ``tp`` branch) checkpoints, including those converted
  from TensorFlow, which lack BatchNorm's ``num_batches_tracked``;
- tiatoolbox's (``hovernet_fast-pannuke.pth``, ``hovernet_original-consep.pth``, ...): a plain state dict;
  tiatoolbox's HoVer-Net uses the same module names, so no renaming is needed;
- either of them under a ``"state_dict"`` key.

The mode comes from the decoder's kernel size (5: original, 3: fast) and the number of types from the
``tp`` head, so the user never has to say which checkpoint it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from preprocess.errors import SegmenterWeightsError
from preprocess.features.weights_file import load_weights_file
from preprocess.nuclei.hovernet.model import HoVerNet

logger = logging.getLogger(__name__)

LAYOUTS = (
    "the original HoVer-Net repository's {'desc': state_dict} (with or without 'module.' prefixes), "
    "tiatoolbox's plain HoVer-Net state_dict, or either under a 'state_dict' key"
)
_MODE_KEY = "decoder.np.u3.conva.weight"  # (256, 1024, k, k): k = 5 original, 3 fast
_TYPES_KEY = "decoder.tp.u0.conv.weight"  # (n_types, 64, 1, 1)
_OPTIONAL_SUFFIXES = ("num_batches_tracked", "upsample2x.unpool_mat")  # not learned; absent in some files
_KSIZE_TO_MODE = {5: "original", 3: "fast"}
_SHOWN_KEYS = 5


def load_hovernet(path: Path, device: str | torch.device = "cpu") -> HoVerNet:
    """The HoVer-Net stored at ``path``, in eval mode on ``device``; mode and types come from the tensors.

    Raises :class:`SegmenterWeightsError` when the file is missing, unreadable, or not a HoVer-Net
    checkpoint in one of the accepted layouts (the message names the first missing and unexpected keys).
    """
    state = unwrap_state_dict(read_checkpoint(path), source=str(path))
    mode, n_types = infer_architecture(state, source=str(path))
    with torch.device("meta"):  # no memory and no random init for tensors about to be overwritten
        model = HoVerNet(mode, n_types)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(_with_optional_buffers(model, state), strict=True, assign=True)
    logger.info("HoVer-Net weights %s: %s mode, %s", path, mode,
                f"{n_types} nucleus types" if n_types else "no type branch")
    return model.eval().to(device)


def read_checkpoint(path: Path) -> object:
    """What ``torch.load(path, map_location="cpu", weights_only=True)`` returns, errors as SegmenterWeightsError."""
    return load_weights_file(path, lambda reason: SegmenterWeightsError(
        f"cannot read HoVer-Net weights {path}: the file {reason}. Expected a torch checkpoint of tensors only: "
        f"{LAYOUTS}"))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` dict inside a checkpoint object, without wrappers or ``module.`` prefixes."""
    if isinstance(obj, Mapping):
        for wrapper in ("desc", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SegmenterWeightsError(
            f"{source} holds {type(obj).__name__}"
            + (f" with keys {sorted(map(str, obj))[:_SHOWN_KEYS]}" if isinstance(obj, Mapping) else "")
            + f", not a HoVer-Net state dict; accepted layouts: {LAYOUTS}"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def infer_architecture(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> tuple[str, int | None]:
    """(mode, n_types) of a HoVer-Net state dict: "original"/"fast", and None when it has no ``tp`` branch."""
    weight = state.get(_MODE_KEY)
    if weight is None or weight.ndim != 4:
        # Name what is wrong against the most common checkpoint (PanNuke, fast, 6 types).
        check_state_dict(HoVerNet("fast", 6), state, source)
        raise SegmenterWeightsError(f"{source}: {_MODE_KEY} is not a 4-d convolution weight; accepted: {LAYOUTS}")
    mode = _KSIZE_TO_MODE.get(int(weight.shape[-1]))
    if mode is None:
        raise SegmenterWeightsError(
            f"{source}: decoder kernel size {weight.shape[-1]} is neither 5 (original) nor 3 (fast) HoVer-Net"
        )
    types = state.get(_TYPES_KEY)
    return mode, (int(types.shape[0]) if types is not None else None)


def _with_optional_buffers(model: HoVerNet, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as float32 (half-precision files too), with the buffers some files lack filled in."""
    full = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    for key in model.state_dict():
        if key not in full and key.endswith("num_batches_tracked"):
            full[key] = torch.tensor(0, dtype=torch.long)
        elif key not in full and key.endswith("unpool_mat"):
            full[key] = torch.ones(2, 2)
    return full


def check_state_dict(model: HoVerNet, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`SegmenterWeightsError` unless ``state`` has exactly ``model``'s learned tensors and shapes."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(_OPTIONAL_SUFFIXES)}
    given = {k: v.shape for k, v in state.items() if not k.endswith(_OPTIONAL_SUFFIXES)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {tuple(given[k])} (expected {tuple(s)})" for k, s in expected.items()
             if k in given and given[k] != s]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, first {missing[:_SHOWN_KEYS]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, first {unexpected[:_SHOWN_KEYS]}")
    if wrong:
        parts.append(f"{len(wrong)} tensors of the wrong shape, first {wrong[:_SHOWN_KEYS]}")
    raise SegmenterWeightsError(
        f"{source} does not fit HoVer-Net ({model.mode} mode, "
        f"{model.n_types or 'no'} types): {'; '.join(parts)}. Accepted layouts: {LAYOUTS}"
    )
