"""Write a small pyramidal tiled TIFF demo slide that OpenSlide opens as generic TIFF.

    python scripts/demo_slide.py OUT.tiff

The image is scikit-image's ``immunohistochemistry()`` (512 x 512 RGB, DAB-stained nuclei), so the
demo needs no download. Its pixel size is not known; the TIFF records 0.25 um/px, and ``stack.py up``
passes ``--mpp 0.25`` as well. Runs in the project venv (numpy, scikit-image, tifffile, openslide).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TILE_SIZE_PX = 256  # the image is only 512 px wide: 256 px tiles still give level 0 four tiles
MPP = 0.25  # its nuclei are 25-30 px across, as at 40x; at 0.5 the segmenter splits them into texture
MIN_LEVEL_SIZE_PX = 128


def pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Level 0 and 2x-downsampled levels (2x2 mean) down to ``MIN_LEVEL_SIZE_PX``.

    ``image`` is (rows, cols, 3) uint8; each level is too.
    """
    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= MIN_LEVEL_SIZE_PX:
        prev = levels[-1]
        rows, cols = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        blocks = prev[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2, 3).astype(np.float32)
        levels.append(blocks.mean(axis=(1, 3)).round().astype(np.uint8))
    return levels


def write_pyramidal_tiff(levels: list[np.ndarray], path: Path, mpp: float = MPP) -> None:
    """One tiled, deflate-compressed page per level (OpenSlide's generic TIFF reads each tiled
    page as a level), written to a temporary file and moved into place."""
    import tifffile

    tmp = path.with_suffix(".tmp.tiff")
    px_per_cm = 1e4 / mpp
    with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, level in enumerate(levels):
            scale = level.shape[1] / levels[0].shape[1]
            tif.write(level, photometric="rgb", tile=(TILE_SIZE_PX, TILE_SIZE_PX),
                      compression="zlib", resolution=(px_per_cm * scale, px_per_cm * scale),
                      resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
                      description="HALI demo slide: skimage.data.immunohistochemistry()" if i == 0
                      else None, metadata=None)
    os.replace(tmp, path)


def check_openslide(path: Path) -> str:
    """Open ``path`` with OpenSlide and describe it; raise if it is not a multi-level slide."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        if slide.level_count < 2:
            raise ValueError(f"{path}: OpenSlide sees {slide.level_count} level(s), "
                             "expected a pyramid")
        region = slide.read_region((0, 0), 0, (64, 64))
        return (f"{path}: vendor={slide.properties.get('openslide.vendor')} "
                f"levels={slide.level_dimensions} mpp-x={slide.properties.get('openslide.mpp-x')} "
                f"region={region.size}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/demo_slide.py OUT.tiff", file=sys.stderr)
        return 2
    from skimage import data

    path = Path(argv[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(pyramid(data.immunohistochemistry()), path)
    print(check_openslide(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
