"""Write a large synthetic whole slide: a pyramidal tiled TIFF with mpp metadata and real nuclei.

    python scripts/make_big_slide.py OUT.tiff [--size 20000] [--tissue-fraction 0.4]
                                              [--source ../shared/data/wsi/CMU-1-Small-Region.svs]

Tissue is the source slide's H&E (CMU-1-Small-Region, 0.499 um/px, by default; scikit-image's IHC image at
0.25 um/px when the source is absent) tiled with mirroring, each source-sized block given a small colour shift
of its own (stain density scaled by 0.92-1.08 per channel), laid out as seeded elliptical tissue pieces on a
near-white glass background covering ``--tissue-fraction`` of the area (40 % by default, as on a real slide).
The file is written tile by tile, level by level (each level samples level 0 with a stride), so memory stays
at a few tens of MB whatever ``--size``. OpenSlide opens it as a generic tiled TIFF; ``openslide.mpp-x`` is
the source's mpp.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TILE_PX = 512
MASK_CELL_PX = 32  # the tissue layout is drawn on a grid this coarse
MIN_LEVEL_PX = 1024
DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


class SyntheticSlide:
    """Pixels of a ``size_px`` square synthetic slide at any level-0 coordinate, computed on demand.

    ``source``: uint8 (rows, cols, 3) RGB tissue texture. ``seed`` fixes the layout and the colour shifts.
    """

    def __init__(self, source: np.ndarray, size_px: int, seed: int = 0, tissue_fraction: float = 0.4) -> None:
        self.source, self.size_px = source, size_px
        rng = np.random.default_rng(seed)
        rows, cols = source.shape[:2]
        n_blocks = (size_px // min(rows, cols)) + 2
        self._shift = rng.uniform(0.92, 1.08, size=(n_blocks, n_blocks, 3)).astype(np.float32)
        self._mask = _tissue_layout(size_px, tissue_fraction, rng)

    def region(self, x0: int, y0: int, width: int, height: int, stride: int = 1) -> np.ndarray:
        """uint8 (height, width, 3): level-0 pixels from (x0, y0) taking every ``stride``-th one."""
        src_rows, src_cols = self.source.shape[:2]
        xs = (x0 + np.arange(width)) * stride
        ys = (y0 + np.arange(height)) * stride
        rgb = self.source[_mirror(ys, src_rows)[:, None], _mirror(xs, src_cols)[None, :]].astype(np.float32)
        # The shift scales optical density (stain amount), so glass stays white and only stain varies.
        last = self._shift.shape[0] - 1  # padding past the slide's edge reuses the last block's shift
        shift = self._shift[np.minimum(ys // src_rows, last)[:, None], np.minimum(xs // src_cols, last)[None, :]]
        density = -np.log((rgb + 1.0) / 256.0) * shift
        rgb = 256.0 * np.exp(-density) - 1.0
        inside = self._mask[np.minimum(ys // MASK_CELL_PX, self._mask.shape[0] - 1)[:, None],
                            np.minimum(xs // MASK_CELL_PX, self._mask.shape[1] - 1)[None, :]]
        outside = (xs[None, :] >= self.size_px) | (ys[:, None] >= self.size_px) | ~inside
        rgb[outside] = 242.0
        return np.clip(rgb, 0, 255).astype(np.uint8)


def _mirror(coords: np.ndarray, period: int) -> np.ndarray:
    """Index into a source of ``period`` pixels, tiled with mirroring (no seams)."""
    u = coords % (2 * period)
    return np.where(u < period, u, 2 * period - 1 - u)


def _tissue_layout(size_px: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """bool (cells, cells) tissue mask on a ``MASK_CELL_PX`` grid: seeded ellipses until ``fraction`` is covered."""
    n = -(-size_px // MASK_CELL_PX)
    mask = np.zeros((n, n), bool)
    yy, xx = np.mgrid[0:n, 0:n]
    while mask.mean() < fraction:
        cx, cy = rng.uniform(0.1, 0.9, 2) * n
        a, b = rng.uniform(0.08, 0.25, 2) * n
        mask |= ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
    return mask


def levels(size_px: int) -> list[int]:
    """Downsamples 1, 2, 4, ... while the level is at least :data:`MIN_LEVEL_PX` a side."""
    out = [1]
    while size_px // (out[-1] * 2) >= MIN_LEVEL_PX:
        out.append(out[-1] * 2)
    return out


def _tiles(slide: SyntheticSlide, side_px: int, stride: int) -> Iterator[np.ndarray]:
    """Full ``TILE_PX`` tiles of one level in row-major order (edge tiles padded), as tifffile expects."""
    for y0 in range(0, side_px, TILE_PX):
        for x0 in range(0, side_px, TILE_PX):
            yield slide.region(x0, y0, TILE_PX, TILE_PX, stride)


def write_slide(slide: SyntheticSlide, path: Path, mpp: float) -> None:
    """Write every level of ``slide`` to ``path`` (temporary file, then ``os.replace``)."""
    import tifffile

    tmp = path.with_suffix(".tmp.tiff")
    px_per_cm = 1e4 / mpp
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, down in enumerate(levels(slide.size_px)):
            side = slide.size_px // down
            tif.write(_tiles(slide, side, down), shape=(side, side, 3), dtype=np.uint8, photometric="rgb",
                      tile=(TILE_PX, TILE_PX), compression="zlib", compressionargs={"level": 1},
                      resolution=(px_per_cm / down, px_per_cm / down), resolutionunit="CENTIMETER",
                      subfiletype=0 if i == 0 else 1, metadata=None,
                      description=f"HALI synthetic slide {slide.size_px} px" if i == 0 else None)
    os.replace(tmp, path)


def load_source(path: Path | None) -> tuple[np.ndarray, float]:
    """(uint8 RGB texture, mpp): the whole source slide, or scikit-image's IHC image at 0.25 um/px."""
    if path is not None and path.is_file():
        import openslide

        with openslide.OpenSlide(str(path)) as src:
            rgba = np.asarray(src.read_region((0, 0), 0, src.dimensions))
            return np.ascontiguousarray(rgba[..., :3]), float(src.properties[openslide.PROPERTY_NAME_MPP_X])
    from skimage import data

    return data.immunohistochemistry(), 0.25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=20000, help="side in level-0 pixels (default 20000)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="tissue texture (a slide OpenSlide reads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tissue-fraction", type=float, default=0.4, help="share of the area under tissue pieces")
    args = parser.parse_args(argv)
    if args.size < MIN_LEVEL_PX:
        parser.error(f"--size {args.size} must be at least {MIN_LEVEL_PX}")
    if not 0 < args.tissue_fraction <= 1:
        parser.error(f"--tissue-fraction {args.tissue_fraction} must be in (0, 1]")
    source, mpp = load_source(args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_slide(SyntheticSlide(source, args.size, args.seed, args.tissue_fraction), args.out, mpp)
    print(f"wrote {args.out}: {args.size} x {args.size} px at {mpp} um/px, levels {levels(args.size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
