"""Slide reading: the one adapter around OpenSlide.

:class:`OpenSlideReader` opens whole-slide formats (SVS, pyramidal TIFF, NDPI, ...) and, through
``openslide.open_slide``, plain PNG/JPEG/TIFF images as one-level slides. Every coordinate is a level-0
pixel: ``x0`` is the column and ``y0`` the row of a region's top-left corner. Pixel arrays are
(rows, cols, 3) uint8 RGB; transparent or out-of-slide areas come back white.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import openslide
from PIL import Image

from preprocess.errors import SlideError

logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 8 * 1024 * 1024
_FULL_HASH_LIMIT_BYTES = 512 * 1024 * 1024
_PARTIAL_HASH_BYTES = 64 * 1024 * 1024
_OPEN_ERRORS = (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError)


class OpenSlideReader:
    """Read level-0 regions and thumbnails of one slide.

    ``mpp`` overrides the slide's own microns-per-pixel (for images without that metadata).
    Raises :class:`SlideError` for a missing, corrupt or unsupported file.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self._path = Path(path)
        if mpp is not None and not mpp > 0:
            raise SlideError(f"mpp override {mpp!r} for slide {self._path} must be > 0, e.g. --mpp 0.5 for 20x")
        if not self._path.is_file():
            raise SlideError(f"slide {self._path} does not exist or is not a file; check the path")
        try:
            self._slide = openslide.open_slide(str(self._path))
        except _OPEN_ERRORS as exc:
            raise SlideError(
                f"slide {self._path} is not a format OpenSlide or Pillow can read ({exc}); "
                "convert it to a pyramidal TIFF or pass a PNG/JPEG/TIFF"
            ) from exc
        self._mpp_override = mpp

    @property
    def path(self) -> Path:
        """The slide file."""
        return self._path

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 size as (width, height) in pixels."""
        width, height = self._slide.dimensions
        return int(width), int(height)

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel: the override if given, else ``openslide.mpp-x``, else None."""
        if self._mpp_override is not None:
            return float(self._mpp_override)
        raw = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            logger.warning("slide %s has an unreadable mpp %r; ignoring it", self._path, raw)
            return None
        return value if value is not None and value > 0 else None

    def require_mpp(self) -> float:
        """The mpp, or :class:`SlideError` telling the user to pass ``--mpp``."""
        mpp = self.mpp
        if mpp is None:
            raise SlideError(
                f"slide {self._path} has no microns-per-pixel metadata; pass --mpp, e.g. --mpp 0.5 for 20x"
            )
        return mpp

    @cached_property
    def slide_id(self) -> str:
        """16 hex characters of a BLAKE2b hash of the file's size and content.

        Files up to 512 MiB are hashed whole; larger ones by their first and last 64 MiB, which is
        enough to tell slides apart and keeps hashing a 5 GB slide under a second or two.
        """
        size = self._path.stat().st_size
        digest = hashlib.blake2b(size.to_bytes(8, "little"))
        with self._path.open("rb") as fh:
            if size <= _FULL_HASH_LIMIT_BYTES:
                _hash_bytes(fh, digest, size)
            else:
                _hash_bytes(fh, digest, _PARTIAL_HASH_BYTES)
                fh.seek(size - _PARTIAL_HASH_BYTES)
                _hash_bytes(fh, digest, _PARTIAL_HASH_BYTES)
        return digest.hexdigest()[:16]

    def read_region(self, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """Level-0 pixels of the region from column ``x0``, row ``y0``: uint8 (height, width, 3) RGB.

        The region may extend past the slide; those pixels are white.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"region size {width}x{height} must be positive")
        try:
            rgba = self._slide.read_region((int(x0), int(y0)), 0, (int(width), int(height)))
        except _OPEN_ERRORS as exc:
            raise SlideError(
                f"slide {self._path} failed to read region x0={x0} y0={y0} {width}x{height} ({exc}); "
                "the file may be truncated or corrupt: re-copy or re-export it"
            ) from exc
        return _rgba_on_white(np.asarray(rgba))

    def best_level(self, downsample: float) -> tuple[int, float]:
        """The pyramid level to read for ``downsample`` level-0 pixels per output pixel: the coarsest level
        not coarser than that (OpenSlide's ``get_best_level_for_downsample``), and its own downsample."""
        level = int(self._slide.get_best_level_for_downsample(max(1.0, float(downsample))))
        return level, float(self._slide.level_downsamples[level])

    def read_level_region(self, x0: int, y0: int, level: int, width: int, height: int) -> np.ndarray:
        """Pixels of pyramid ``level`` from level-0 column ``x0``, row ``y0``: uint8 (height, width, 3) RGB,
        ``width x height`` in that level's pixels (each ``level_downsamples[level]`` level-0 pixels wide)."""
        if width <= 0 or height <= 0:
            raise ValueError(f"region size {width}x{height} must be positive")
        try:
            rgba = self._slide.read_region((int(x0), int(y0)), int(level), (int(width), int(height)))
        except _OPEN_ERRORS as exc:
            raise SlideError(
                f"slide {self._path} failed to read level {level} at x0={x0} y0={y0} {width}x{height} ({exc}); "
                "the file may be truncated or corrupt: re-copy or re-export it"
            ) from exc
        return _rgba_on_white(np.asarray(rgba))

    def thumbnail(self, max_side_px: int) -> tuple[np.ndarray, float]:
        """A whole-slide thumbnail no larger than ``max_side_px`` on either side.

        Returns (uint8 (rows, cols, 3) RGB, downsample), where downsample is level-0 pixels per
        thumbnail pixel (the mean of the two axes, which differ only by rounding).
        """
        try:
            image = self._slide.get_thumbnail((int(max_side_px), int(max_side_px)))
        except _OPEN_ERRORS as exc:
            raise SlideError(
                f"slide {self._path} failed to make a thumbnail ({exc}); the file may be corrupt: re-export it"
            ) from exc
        rgb = np.asarray(image.convert("RGB"))
        width, height = self.dimensions
        downsample = (width / rgb.shape[1] + height / rgb.shape[0]) / 2.0
        return rgb, downsample

    def close(self) -> None:
        """Release the OpenSlide handle."""
        self._slide.close()

    def __enter__(self) -> OpenSlideReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenSlideReader({str(self._path)!r}, dimensions={self.dimensions}, mpp={self.mpp})"


def _hash_bytes(fh: BinaryIO, digest: Any, n_bytes: int) -> None:
    """Feed up to ``n_bytes`` from ``fh``'s position into ``digest``, in 8 MiB chunks."""
    remaining = n_bytes
    while remaining > 0:
        chunk = fh.read(min(_HASH_CHUNK_BYTES, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (rows, cols, 4) uint8 RGBA (not premultiplied) onto white; returns (rows, cols, 3) uint8."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)
