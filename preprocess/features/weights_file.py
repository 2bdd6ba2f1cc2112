"""Reading a weights file with ``torch.load(weights_only=True)``, and saying in one line why one cannot be read.

Both checkpoint loaders (the ResNet-18 backbone, a pluggable encoder and HoVer-Net) use :func:`load_weights_file`, so a user who
passes the wrong file hears the same plain reason: missing, a directory, empty, a Git LFS pointer instead of
the weights, cut short, not a torch file at all, or a pickle holding objects other than tensors.
:func:`sidecar_normalisation` reads the patch normalisation from a checkpoint's JSON sidecar.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from preprocess.errors import FeaturizerError, PreprocessError

logger = logging.getLogger(__name__)

_LFS_POINTER = b"version https://git-lfs"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_TORCH_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError)


def load_weights_file(path: Path, fail: Callable[[str], PreprocessError]) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``; raises ``fail(reason)`` when it cannot.

    ``reason`` is one line that starts with what is wrong with the file ("does not exist", "is empty ...").
    """
    path = Path(path)
    reason = _file_problem(path)
    if reason:
        raise fail(reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_ERRORS as exc:
        with path.open("rb") as fh:
            is_zip = fh.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        raise fail(describe_load_error(exc, is_zip)) from exc


def _file_problem(path: Path) -> str | None:
    if path.is_dir():
        return "is a directory, not a weights file"
    if not path.is_file():
        return "does not exist"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes): the download or copy did not finish"
    with path.open("rb") as fh:
        head = fh.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        return f"is a Git LFS pointer ({size} bytes), not the weights: run `git lfs pull` or download the file itself"
    return None


def describe_load_error(exc: BaseException, is_zip: bool = False) -> str:
    """One line saying why ``torch.load`` failed, from its (often many-line) message.

    ``is_zip``: the file starts like a zip archive, as torch.save writes by default; one that then fails to
    load was cut short or damaged, whatever the error (a short one gives "Invalid argument" on a seek).
    """
    text = " ".join(str(exc).split())
    detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else ""
    detail = detail.split(" Check the documentation", 1)[0].strip()
    if "Unsupported global" in detail:
        return (f"holds pickled Python objects, not only tensors ({_first_sentence(detail)}), and is not "
                "unpickled for safety: save a state_dict of tensors")
    if is_zip or "unexpected EOF" in text or isinstance(exc, EOFError):
        return f"is truncated or corrupt ({_first_sentence(text)}): download or copy it again"
    if "Weights only load failed" in text:
        return ("is not a torch checkpoint (torch.load found no pickle or zip archive it reads: "
                f"{_first_sentence(detail)})")
    return f"cannot be read by torch.load ({_first_sentence(text)})"


def _first_sentence(text: str, limit: int = 160) -> str:
    sentence = text.split(". ", 1)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def sidecar_normalisation(checkpoint: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` from the checkpoint's JSON sidecar, or None when there is no sidecar or it has none."""
    sidecar = checkpoint.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeaturizerError(f"checkpoint sidecar {sidecar} is not readable JSON ({exc}); fix or remove it") from exc
    if not isinstance(meta, dict) or "mean" not in meta or "std" not in meta:
        return None
    mean, std = meta["mean"], meta["std"]
    if not (_three_floats(mean) and _three_floats(std) and min(std) > 0):
        raise FeaturizerError(
            f"checkpoint sidecar {sidecar} has mean {mean!r} and std {std!r}; each must be 3 numbers (RGB in [0, 1]), "
            "std > 0"
        )
    logger.info("normalising patches with mean %s, std %s from %s", mean, std, sidecar)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _three_floats(values: object) -> bool:
    return isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)
