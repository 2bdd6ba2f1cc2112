"""Versioned heads of one Label Studio project, on disk.

Layout of a project directory::

    v0001.pt      torch.save of the learner's to_state() (tensors + JSON-able values only; any learner of
                  ml_backend.model.learners, named by its state's ``learner`` key)
    v0001.json    sidecar: version, model_version name, head hyper-parameters, classes seen, created_at,
                  and whatever the caller's meta holds (metrics, label snapshot hash, backbone, ...)
    latest.json   {"version": 1}: the version to serve
    v0002.reserved  a marker (its creation time) created exclusively (``O_EXCL``) by :meth:`ModelStore.reserve_version`
                  before any prediction of v0002 is written: two workers, or a run restarted after a kill,
                  never get the same number. A run that failed leaves it, so its name is never reused

Every file is written to a temporary name and moved into place with ``os.replace``, in the order
weights, sidecar, pointer, so a reader that follows ``latest.json`` always finds a complete version.
Weights are read with ``torch.load(..., weights_only=True)``: nothing is unpickled.

``version_name`` / ``parse_version_name`` (``hali-v0007`` <-> 7) are re-exported from
:mod:`label_config.serving`, the contract with Label Studio.

Exceptions::

    ModelStoreError(BackendError)  a missing, corrupt or clashing model file (the message names the path)
"""

from __future__ import annotations

import json
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from adapters.atomic import write_atomic
from label_config.serving import parse_version_name, version_name
from ml_backend.errors import BackendError
from ml_backend.model.learners import Learner, learner_from_state, learner_name

__all__ = ["LATEST_FILE", "ModelStore", "ModelStoreError", "parse_version_name", "version_name"]

LATEST_FILE = "latest.json"
_VERSION_FILE = re.compile(r"^v(\d{4,})\.(pt|json|reserved)$")


class ModelStoreError(BackendError):
    """A model file is missing, unreadable or would be overwritten."""


class ModelStore:
    """The model versions of one project, kept under ``root`` (created on first save)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def weights_path(self, version: int) -> Path:
        return self.root / f"v{version:04d}.pt"

    def sidecar_path(self, version: int) -> Path:
        return self.root / f"v{version:04d}.json"

    def save(self, version: int, head: Learner, meta: dict[str, Any]) -> Path:
        """Write ``head`` as ``version`` and make it the latest; returns the weights path.

        ``meta`` must be JSON-serialisable; its keys may not be those the store writes (``version``,
        ``hyper_parameters``, ...), which win. Raises ModelStoreError when ``version`` is not above the
        latest or its files exist already (use :meth:`next_version`).
        """
        if version <= self.latest_version():
            raise ModelStoreError(
                f"version {version} is not above the latest ({self.latest_version()}) in {self.root}; "
                "save under store.next_version()"
            )
        weights, sidecar = self.weights_path(version), self.sidecar_path(version)
        for path in (weights, sidecar):
            if path.exists():
                raise ModelStoreError(f"{path} exists already; save under store.next_version() instead")
        sidecar_text = _to_json(_sidecar(version, head, meta), sidecar)
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(weights, lambda f: torch.save(head.to_state(), f))
        write_atomic(sidecar, lambda f: f.write(sidecar_text.encode()))
        write_atomic(self.root / LATEST_FILE, lambda f: f.write(json.dumps({"version": version}).encode()))
        self._reserved_path(version).unlink(missing_ok=True)  # the weights now hold the number
        return weights

    def latest_version(self) -> int:
        """The version ``latest.json`` points to; 0 when nothing was saved yet."""
        pointer = self.root / LATEST_FILE
        if not pointer.exists():
            return 0
        version = _read_json(pointer).get("version")
        if not isinstance(version, int) or version < 1:
            raise ModelStoreError(f"{pointer} holds version {version!r}, expected a positive integer")
        return version

    def next_version(self) -> int:
        """One more than any version on disk or in the pointer, even a partly written one."""
        on_disk = [int(m.group(1)) for p in self._listing() if (m := _VERSION_FILE.match(p.name))]
        return max([self.latest_version(), *on_disk], default=0) + 1

    def reserve_version(self, above: int = 0) -> int:
        """A version number no one else holds: above ``above`` (e.g. the highest Label Studio knows) and every
        version on disk, reserved by creating ``vNNNN.reserved`` exclusively. Safe across processes and hosts
        that share the directory (``O_EXCL``); a failed or killed run keeps its marker, so its number is never
        used again."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = max(self.next_version(), above + 1)
        while True:
            try:
                with open(self._reserved_path(version), "x") as marker:
                    marker.write(datetime.now(timezone.utc).isoformat(timespec="seconds"))
                return version
            except FileExistsError:  # another worker took it between our listing and the create
                version += 1

    def _reserved_path(self, version: int) -> Path:
        return self.root / f"v{version:04d}.reserved"

    def load(self, version: int | None = None) -> tuple[Learner, dict[str, Any]]:
        """The head and sidecar dict of ``version`` (default: the latest). ModelStoreError if absent or corrupt."""
        if version is None:
            version = self.latest_version()
            if version == 0:
                raise ModelStoreError(f"no model saved in {self.root} yet (no {LATEST_FILE}); train one first")
        meta = _read_json(self.sidecar_path(version))
        return _read_head(self.weights_path(version)), meta

    def _listing(self) -> list[Path]:
        return list(self.root.iterdir()) if self.root.is_dir() else []


def _sidecar(version: int, head: Learner, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        **meta,
        "version": version,
        "model_version": version_name(version),
        "learner": learner_name(head),
        "hyper_parameters": head.get_params(),
        "n_features": int(head.n_features_in_),
        "classes_seen": [int(c) for c in head.classes_seen_],
        "n_epochs": int(head.n_epochs_),
        "best_val_loss": head.best_val_loss_,
        "created_at": meta.get("created_at") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _to_json(payload: dict[str, Any], path: Path) -> str:
    try:
        return json.dumps(payload, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ModelStoreError(f"metadata for {path} is not JSON-serialisable ({err}); pass plain values") from err


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelStoreError(f"{path} is missing; the model version was never completely saved") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelStoreError(f"{path} is not readable JSON ({err}); delete it or retrain") from err
    if not isinstance(payload, dict):
        raise ModelStoreError(f"{path} holds a JSON {type(payload).__name__}, expected an object")
    return payload


def _read_head(path: Path) -> Learner:
    if not path.exists():
        raise ModelStoreError(f"{path} is missing; the model version was never completely saved")
    try:
        return learner_from_state(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError) as err:
        raise ModelStoreError(f"{path} is not a readable HALI model ({err}); delete it or retrain") from err
