"""Tile images at one physical resolution, whatever the scan's.

A tile is planned in level-0 pixels (``x0, y0`` and a level-0 extent). Its PNG is rendered at ``tile_mpp``
microns per pixel (default 0.5, i.e. 20x), so an annotator sees nuclei at the same size on a 40x scan
(0.25 um/px, PNG downsampled 2x) and on a 20x scan (PNG at full resolution). A scan coarser than the
target (say 10x, 1.0 um/px) is **not** upsampled: interpolation adds no detail, quadruples the bytes
stored and served, and Label Studio's zoom enlarges it in the browser anyway. Within 5 % of the target
the scan's own pixels are kept (scanners call 0.49-0.50 um/px "20x"; resampling by 1 % only blurs).

Geometry (:func:`fit_tile`): the PNG is ``width x height`` pixels, and pixel ``(c, r)`` covers level-0
``[x0 + c * downsample, x0 + (c + 1) * downsample)`` and likewise for rows, with ``downsample =
tile_mpp / mpp``. That is exactly the mapping of ``label_config.region_to_slide_box``, so percent
boxes drawn on the PNG land on the same level-0 pixels.

Rendering (:func:`render_tile`) reads from the pyramid level OpenSlide picks for that downsample, not from
level 0, and resamples the exact (fractional) level-0 extent with Pillow's ``box=`` argument.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from PIL import Image
from tqdm import tqdm

from adapters.slide_reader import OpenSlideReader
from adapters.storage import Storage
from label_config import TileTask
from preprocess.layout import tile_key

log = logging.getLogger(__name__)

DEFAULT_TILE_MPP = 0.5
_KEEP_NATIVE_WITHIN = 0.05


def tile_downsample(mpp: float | None, tile_mpp: float) -> float:
    """Level-0 pixels per tile pixel: ``tile_mpp / mpp``, but never below 1 (no upsampling), 1 within 5 % of
    the target, and 1 when the slide's mpp is unknown."""
    if mpp is None or mpp <= 0:
        return 1.0
    downsample = tile_mpp / mpp
    return 1.0 if downsample < 1.0 + _KEEP_NATIVE_WITHIN else downsample


def fit_tile(tile: TileTask, downsample: float, image_uri: Callable[[str], str]) -> TileTask:
    """``tile`` with its PNG size set for ``downsample`` and ``image`` set to ``image_uri(key)``.

    ``tile.width, tile.height`` come in as the level-0 extent (``downsample`` 1, as ``build_tiles`` makes
    them). The PNG gets ``round(extent / downsample)`` pixels a side, so it covers the planned box to within
    half a tile pixel; the cells' level-0 boxes are unchanged.
    """
    w0, h0 = tile.width * tile.downsample, tile.height * tile.downsample
    width, height = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
    fitted = replace(tile, width=width, height=height, downsample=float(downsample))
    return replace(fitted, image=image_uri(tile_key(fitted)))


def fit_tiles(tiles: Sequence[TileTask], mpp: float | None, tile_mpp: float, storage: Storage) -> list[TileTask]:
    """Every tile sized for ``tile_mpp`` um/px and pointed at its PNG in ``storage``."""
    downsample = tile_downsample(mpp, tile_mpp)
    return [fit_tile(t, downsample, storage.task_uri) for t in tiles]


def render_tile(reader: OpenSlideReader, tile: TileTask) -> np.ndarray:
    """The tile's pixels: uint8 (tile.height, tile.width, 3) RGB covering ``tile.width * tile.downsample``
    level-0 pixels from ``(tile.x0, tile.y0)`` (and the same for rows); area beyond the slide is white."""
    if tile.downsample == 1.0:
        return reader.read_region(tile.x0, tile.y0, tile.width, tile.height)
    level, level_ds = reader.best_level(tile.downsample)
    extent_w = tile.width * tile.downsample / level_ds  # in that level's pixels, fractional
    extent_h = tile.height * tile.downsample / level_ds
    region = reader.read_level_region(tile.x0, tile.y0, level, math.ceil(extent_w), math.ceil(extent_h))
    image = Image.fromarray(region).resize((tile.width, tile.height), Image.Resampling.LANCZOS,
                                           box=(0.0, 0.0, extent_w, extent_h))
    return np.asarray(image)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of uint8 (rows, cols, 3) RGB; compression level 3 (zlib's best trades 3x time for ~5 %)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def write_tile_images(reader: OpenSlideReader, tiles: Sequence[TileTask], storage: Storage,
                      progress: bool = False) -> int:
    """Render and store every tile whose PNG is not in ``storage`` yet; returns how many were written.

    Keys carry the tile's geometry (:func:`preprocess.layout.tile_key`), so a PNG that exists is the right
    one and a run that stopped half way resumes where it stopped.
    """
    stored = set().union(*(storage.keys(f"{d}/") for d in {tile_key(t).rsplit("/", 1)[0] for t in tiles}))
    written = 0
    for tile in tqdm(tiles, desc="tile images", unit="tile", disable=not progress):
        key = tile_key(tile)
        if key in stored:
            continue
        storage.put_bytes(key, encode_png(render_tile(reader, tile)), "image/png")
        written += 1
    log.info("slide %s: %d tile images written, %d already stored in %s", tiles[0].slide_id if tiles else "-",
             written, len(tiles) - written, storage)
    return written
