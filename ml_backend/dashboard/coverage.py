"""The coverage map of one slide: where the tasks are, which are done, and the labelled cells (pure: PNG out).

On the slide's thumbnail (or a white canvas when the slide file is not readable), each task's cells span a
rectangle: grey outline while open, tinted green once annotated; each labelled cell is a dot in its class
colour ("Not a nucleus" black, as in Label Studio).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from label_config import TileTask
from ml_backend.labels.tile_store import TileStore

MAX_SIDE_PX = 1024
_OPEN_RGB = np.array([150, 150, 150], np.uint8)
_DONE_RGB = np.array([40, 170, 60], np.float32)
_DEFAULT_RGB = (128, 128, 128)


def coverage_png(tiles: Iterable[TileTask], done: set[str], labels: Mapping[str, str],
                 colours: Mapping[str, tuple[int, int, int]], thumbnail: np.ndarray | None = None,
                 downsample: float | None = None) -> bytes:
    """PNG of the coverage map. ``done``: tile ids of annotated tasks; ``labels``: cell id -> target;
    ``thumbnail``: uint8 (rows, cols, 3) RGB at ``downsample`` level-0 px per pixel, or None (white canvas
    covering the tasks, at most :data:`MAX_SIDE_PX` a side)."""
    tiles = list(tiles)
    spans = np.array([_span(t) for t in tiles], dtype=np.float64).reshape(-1, 4)
    is_done = np.array([t.tile_id in done for t in tiles], dtype=bool)
    return draw_coverage(spans, is_done, tiles, labels, colours, thumbnail, downsample)


def draw_coverage(spans: np.ndarray, is_done: np.ndarray, dot_tiles: Iterable[TileTask], labels: Mapping[str, str],
                  colours: Mapping[str, tuple[int, int, int]], thumbnail: np.ndarray | None = None,
                  downsample: float | None = None) -> bytes:
    """:func:`coverage_png` from each task's level-0 span (T, 4) (x0, y0, x1, y1) (:func:`task_spans`) and
    whether it is done (T,) bool; dots for the labelled cells of ``dot_tiles`` (the done tasks suffice: only
    an annotation labels a cell), so a 50,000-task slide is drawn without building every task's tile."""
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 4)
    if thumbnail is None or downsample is None:
        thumbnail, downsample = _canvas(spans)
    image = np.array(thumbnail, dtype=np.uint8, copy=True)
    boxes = np.floor(spans / downsample).astype(np.int64)
    for (x0, y0, x1, y1), annotated in zip(boxes.tolist(), np.asarray(is_done, bool).tolist()):
        if annotated:
            _tint(image, x0, y0, x1, y1)
        else:
            _outline(image, x0, y0, x1, y1)
    _dots(image, dot_tiles, labels, colours, downsample)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def task_spans(tiles: Mapping[int, TileTask], task_ids: Sequence[int]) -> np.ndarray:
    """Level-0 (x0, y0, x1, y1) (T, 4) float64 around each task's own cells (its window when it has none);
    from a :class:`TileStore`'s arrays without building its tiles."""
    if isinstance(tiles, TileStore):
        return tiles.cell_spans(task_ids)
    return np.array([_span(tiles[t]) for t in task_ids], dtype=np.float64).reshape(-1, 4)


def _span(tile: TileTask) -> tuple[float, float, float, float]:
    """Level-0 (x0, y0, x1, y1) around the task's own cells (its window also shows its neighbours')."""
    if not tile.cells:
        return (tile.x0, tile.y0, tile.x0 + tile.width * tile.downsample, tile.y0 + tile.height * tile.downsample)
    xs0 = min(c.x0 for c in tile.cells)
    ys0 = min(c.y0 for c in tile.cells)
    return (xs0, ys0, max(c.x0 + c.w for c in tile.cells), max(c.y0 + c.h for c in tile.cells))


def _canvas(spans: np.ndarray) -> tuple[np.ndarray, float]:
    extent = spans[:, 2:].max(axis=0) if len(spans) else np.array([1.0, 1.0])
    downsample = max(1.0, float(extent.max()) / MAX_SIDE_PX)
    cols, rows = (int(np.ceil(v / downsample)) + 1 for v in extent)
    return np.full((rows, cols, 3), 255, np.uint8), downsample


def _clip(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
    rows, cols = image.shape[:2]
    return max(0, x0), max(0, y0), min(cols - 1, max(x1, x0 + 1)), min(rows - 1, max(y1, y0 + 1))


def _tint(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    x0, y0, x1, y1 = _clip(image, x0, y0, x1, y1)
    patch = image[y0 : y1 + 1, x0 : x1 + 1].astype(np.float32)
    image[y0 : y1 + 1, x0 : x1 + 1] = (0.55 * patch + 0.45 * _DONE_RGB).astype(np.uint8)


def _outline(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    x0, y0, x1, y1 = _clip(image, x0, y0, x1, y1)
    image[y0, x0 : x1 + 1] = _OPEN_RGB
    image[y1, x0 : x1 + 1] = _OPEN_RGB
    image[y0 : y1 + 1, x0] = _OPEN_RGB
    image[y0 : y1 + 1, x1] = _OPEN_RGB


def _dots(image: np.ndarray, tiles: Iterable[TileTask], labels: Mapping[str, str],
          colours: Mapping[str, tuple[int, int, int]], downsample: float) -> None:
    """A 3 x 3 px dot at each labelled cell's centre, in its class colour."""
    xy, rgb = [], []
    for tile in tiles:
        for cell in tile.cells:
            label = labels.get(cell.cell_id)
            if label is not None:
                xy.append((cell.x0 + cell.w / 2.0, cell.y0 + cell.h / 2.0))
                rgb.append(colours.get(label, _DEFAULT_RGB))
    if not xy:
        return
    pix = np.floor(np.array(xy) / downsample).astype(np.int64)
    col = np.array(rgb, np.uint8)
    rows, cols = image.shape[:2]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, c = pix[:, 1] + dy, pix[:, 0] + dx
            inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
            image[r[inside], c[inside]] = col[inside]
