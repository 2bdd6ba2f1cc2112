"""Slides broken the ways real ones break: cut short by a copy, or with one tile that no longer decodes.

Each starts from the demo slide (scikit-image's IHC image written as a pyramidal, tiled, deflate TIFF by
``scripts/demo_slide.py``) so OpenSlide opens the intact version as ``generic-tiff``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scripts.demo_slide import TILE_SIZE_PX, pyramid, write_pyramidal_tiff


def ihc_image(repeat: int = 1) -> np.ndarray:
    """uint8 (512 * repeat, 512 * repeat, 3) RGB: the IHC image tiled ``repeat`` times each way."""
    from skimage import data

    return np.tile(data.immunohistochemistry(), (repeat, repeat, 1))


def write_slide(path: Path, image: np.ndarray, mpp: float = 0.25) -> Path:
    """``image`` as a pyramidal tiled TIFF at ``mpp``, as ``scripts/demo_slide.py`` writes it."""
    write_pyramidal_tiff(pyramid(image), path, mpp=mpp)
    return path


def truncated_copy(path: Path, out: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``path``'s bytes in ``out``: a copy that stopped part way."""
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def corrupt_level0_tile(path: Path, x0: int, y0: int) -> tuple[int, int, int, int]:
    """Overwrite, in place, the compressed bytes of the level-0 tile holding level-0 pixel (x0, y0).

    Headers and every other tile stay intact, so the slide opens and its thumbnail (from a lower level)
    works; only reading that tile fails. Returns the tile's region as (x0, y0, width, height).
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tiles_across = -(-page.imagewidth // TILE_SIZE_PX)
        index = (y0 // TILE_SIZE_PX) * tiles_across + x0 // TILE_SIZE_PX
        offset, size = page.dataoffsets[index], page.databytecounts[index]
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    tx, ty = x0 // TILE_SIZE_PX * TILE_SIZE_PX, y0 // TILE_SIZE_PX * TILE_SIZE_PX
    return tx, ty, TILE_SIZE_PX, TILE_SIZE_PX
