"""The dashboard's files, beside the project's model versions in ``HALI_DATA_DIR``::

    projects/<p>/dashboard/snapshot.json             the metrics snapshot (ml_backend.dashboard.snapshot)
    projects/<p>/dashboard/coverage-<slide>.png      coverage maps, redrawn when a slide's labels change
    projects/<p>/dashboard/thumbnail-<slide>.png     the slide's thumbnail, read once from the slide file
    projects/<p>/dashboard/prediction-versions.json  Label Studio prediction id -> model version (a cache)

The worker writes them (atomically: a reader sees the old file or the new one); the server reads them.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adapters.atomic import write_atomic

_SAFE_SLIDE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")  # a plain file name, short enough for any filesystem
_SIDECAR = re.compile(r"^v\d{4,}\.json$")


class DashboardFiles:
    """The dashboard files of one project, under ``<models dir>/dashboard``."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.root = self.models_dir / "dashboard"

    @property
    def snapshot_path(self) -> Path:
        return self.root / "snapshot.json"

    def read_snapshot(self) -> dict[str, Any] | None:
        """The snapshot, or None when no retrain wrote one yet (or it is unreadable)."""
        try:
            return json.loads(self.snapshot_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def write_snapshot(self, snapshot: dict[str, Any]) -> None:
        data = json.dumps(snapshot, separators=(",", ":")).encode()
        write_atomic(self.snapshot_path, lambda f: f.write(data))

    def coverage_path(self, slide_id: str) -> Path | None:
        """Where a slide's coverage map lives; None for an id that is not a plain file name."""
        return self.root / f"coverage-{slide_id}.png" if _SAFE_SLIDE.match(slide_id) else None

    def write_png(self, path: Path, png: bytes) -> None:
        write_atomic(path, lambda f: f.write(png))

    def thumbnail(self, slide_id: str) -> tuple[np.ndarray, float] | None:
        """The cached thumbnail (uint8 (rows, cols, 3), level-0 px per pixel), or None."""
        path, meta = self.root / f"thumbnail-{slide_id}.png", self.root / f"thumbnail-{slide_id}.json"
        try:
            downsample = float(json.loads(meta.read_text())["downsample"])
            return np.asarray(Image.open(path).convert("RGB")), downsample
        except (FileNotFoundError, ValueError, KeyError, OSError):
            return None

    def save_thumbnail(self, slide_id: str, image: np.ndarray, downsample: float) -> None:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png = buffer.getvalue()
        write_atomic(self.root / f"thumbnail-{slide_id}.png", lambda f: f.write(png))
        meta = json.dumps({"downsample": downsample}).encode()
        write_atomic(self.root / f"thumbnail-{slide_id}.json", lambda f: f.write(meta))

    def prediction_versions(self) -> dict[int, str]:
        try:
            return {int(k): str(v) for k, v in json.loads(self._versions_path.read_bytes()).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def save_prediction_versions(self, versions: dict[int, str]) -> None:
        data = json.dumps({str(k): v for k, v in versions.items()}).encode()
        write_atomic(self._versions_path, lambda f: f.write(data))

    def sidecars(self) -> list[dict[str, Any]]:
        """Every model version's sidecar dict (``v0001.json``, ...); unreadable ones are skipped."""
        out = []
        for path in sorted(self.models_dir.glob("v*.json")):
            if _SIDECAR.match(path.name):
                try:
                    out.append(json.loads(path.read_bytes()))
                except (OSError, ValueError):
                    continue
        return out

    @property
    def _versions_path(self) -> Path:
        return self.root / "prediction-versions.json"
