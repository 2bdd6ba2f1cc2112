"""Slide reading: the one adapter around OpenSlide.

:class:`OpenSlideReader` opens whole-slide formats (SVS, pyramidal TIFF, NDPI, ...) with OpenSlide and
plain PNG/JPEG/TIFF images with Pillow as one-level slides. Every coordinate is a level-0 pixel: ``x0`` is
the column and ``y0`` the row of a region's top-left corner. Pixel arrays are (rows, cols, 3) uint8 RGB;
transparent or out-of-slide areas come back white.

What is refused at open, each with its own message: a path that is missing or a directory, an empty file, a
vendor file (``.svs``, ``.ndpi``, ...) OpenSlide does not recognise (truncated or corrupt: Pillow is never
asked to read those), a file neither library identifies, and a plain image that is truncated (decoded in
full at open, where ``openslide.open_slide`` would only fail later, inside a thumbnail) or too large to hold.
A tile that fails to decode later, deep inside a slide OpenSlide opened, raises :class:`SlideError` naming
the slide and the region.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import openslide
from PIL import Image

from adapters.errors import SlideError

logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 8 * 1024 * 1024
_FULL_HASH_LIMIT_BYTES = 512 * 1024 * 1024
_PARTIAL_HASH_BYTES = 64 * 1024 * 1024
_OPEN_ERRORS = (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError)
# Extensions only OpenSlide reads (TIFF-based ones included): Pillow would open a truncated .svs as a flat
# TIFF, without its mpp, and fail much later or try to hold a gigapixel page in memory.
WSI_ONLY_SUFFIXES = frozenset({".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi", ".dcm"})
_FIX_CORRUPT = "copy it again (compare its size with the original) or re-export it"


class OpenSlideReader:
    """Read level-0 regions and thumbnails of one slide.

    ``mpp`` overrides the slide's own microns-per-pixel (for images without that metadata).
    Raises :class:`SlideError` for a missing, corrupt or unsupported file.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self._path = Path(path)
        if mpp is not None and not mpp > 0:
            raise SlideError(f"mpp override {mpp!r} for slide {self._path} must be > 0, e.g. --mpp 0.5 for 20x")
        _check_file(self._path)
        vendor = _detect_vendor(self._path)
        self._plain_image = vendor is None
        self._image: Image.Image | None = None  # the decoded plain image, which ImageSlide does not close
        if vendor is not None:
            self._slide = _open_with_openslide(self._path, vendor)
        elif self._path.suffix.lower() in WSI_ONLY_SUFFIXES:
            raise SlideError(
                f"slide {self._path} is not a {self._path.suffix} slide OpenSlide can read: the file is truncated "
                f"or corrupt; {_FIX_CORRUPT}, or convert it to a pyramidal TIFF"
            )
        else:
            self._image = _decode_plain_image(self._path)
            self._slide = openslide.ImageSlide(self._image)
            logger.info("slide %s: not a whole-slide format; read as a plain one-level image", self._path)
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
            how = " (read as a plain image: OpenSlide does not recognise it)" if self._plain_image else ""
            raise SlideError(
                f"slide {self._path} has no microns-per-pixel metadata{how}; pass --mpp, e.g. --mpp 0.5 for 20x"
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
        return self.read_level_region(x0, y0, 0, width, height)

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
                f"slide {self._path} failed to decode the level-{level} region x0={x0} y0={y0} {width}x{height} px "
                f"({exc}); the file is truncated or corrupt there: {_FIX_CORRUPT}"
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
        """Release the OpenSlide handle (or the decoded image)."""
        self._slide.close()
        if self._image is not None:
            self._image.close()

    def __enter__(self) -> OpenSlideReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenSlideReader({str(self._path)!r}, dimensions={self.dimensions}, mpp={self.mpp})"


def _check_file(path: Path) -> None:
    """:class:`SlideError` unless ``path`` is a non-empty file."""
    if path.is_dir():
        raise SlideError(
            f"slide {path} is a directory; pass the slide file itself (for MRXS, the .mrxs file beside the folder)"
        )
    if not path.is_file():
        raise SlideError(f"slide {path} does not exist or is not a file; check the path")
    if path.stat().st_size == 0:
        raise SlideError(f"slide {path} is empty (0 bytes): the copy or download did not finish; copy it again")


def _detect_vendor(path: Path) -> str | None:
    """OpenSlide's name for the file's format ("aperio", "generic-tiff", ...), or None when it has none."""
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except _OPEN_ERRORS as exc:
        raise SlideError(f"slide {path} cannot be read ({exc}); check its permissions and the disk") from exc


def _open_with_openslide(path: Path, vendor: str) -> openslide.OpenSlide:
    try:
        return openslide.OpenSlide(str(path))
    except _OPEN_ERRORS as exc:
        raise SlideError(
            f"slide {path} looks like a {vendor} slide but OpenSlide cannot open it ({exc}): the file is truncated "
            f"or corrupt, or files that belong beside it are missing; {_FIX_CORRUPT}"
        ) from exc


def _decode_plain_image(path: Path) -> Image.Image:
    """``path`` opened and decoded in full by Pillow, so a truncated image is refused here, not mid-run."""
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise SlideError(
            f"slide {path} is a plain image too large to hold in memory ({exc}); convert it to a pyramidal TIFF, "
            "e.g. `vips tiffsave in out.tiff --tile --pyramid --compression jpeg`"
        ) from exc
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise SlideError(
            f"slide {path} is neither a whole-slide image OpenSlide reads nor an image Pillow reads "
            f"(extension {path.suffix or 'none'!r}): if it is meant to be one, it is corrupt: {_FIX_CORRUPT}; "
            "else pass an SVS/NDPI/MRXS/pyramidal TIFF slide or a PNG/JPEG/TIFF, or convert it to a pyramidal TIFF"
        ) from exc
    described = f"a {image.format} image {image.width}x{image.height} px"
    try:
        with warnings.catch_warnings():  # Pillow warns about the broken tags it then fails on; one message is enough
            warnings.simplefilter("ignore", UserWarning)
            if image.format == "TIFF":
                _ = image.n_frames  # walks every page's header: a pyramid cut short fails here, not in load()
            image.load()
    except (OSError, ValueError, SyntaxError, TypeError, EOFError) as exc:  # what Pillow raises on broken files
        image.close()
        raise SlideError(
            f"slide {path} is {described} that cannot be decoded "
            f"({exc}): the file is truncated or corrupt; {_FIX_CORRUPT}"
        ) from exc
    return image


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
