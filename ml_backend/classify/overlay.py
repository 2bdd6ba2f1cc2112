"""A thumbnail of the slide with a dot per classified cell in its class colour (pure: PNG bytes out)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ml_backend.classify.cells import SlideClasses

_DEFAULT_RGB = (128, 128, 128)


def overlay_png(thumbnail: np.ndarray, downsample: float, result: SlideClasses,
                colours: dict[str, tuple[int, int, int]]) -> bytes:
    """PNG of uint8 (rows, cols, 3) ``thumbnail`` (``downsample`` level-0 px per pixel) with every cell's
    centre painted in its class colour (a 3 x 3 px dot where the thumbnail is coarse)."""
    image = np.array(thumbnail, dtype=np.uint8, copy=True)
    rows, cols = image.shape[:2]
    xy = np.floor(result.centroids_xy / downsample).astype(np.int64)
    palette = np.array([colours.get(t, _DEFAULT_RGB) for t in result.targets], dtype=np.uint8)
    code = {t: i for i, t in enumerate(result.targets)}
    rgb = palette[np.array([code[t] for t in result.labels], dtype=np.int64)] if len(xy) else palette[:0]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, c = xy[:, 1] + dy, xy[:, 0] + dx
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
            image[r[inside], c[inside]] = rgb[inside]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
