"""From segmented nuclei and a tile plan to Label Studio tasks (pure: no I/O).

A task's image is a **window** of the slide centred on its cells (:func:`task_window`): at least
``min_px`` tile pixels a side (256 at 0.5 um/px = 128 um), grown to hold every cell's box with a margin, and
in focused mode to show about ``cells_per_task`` cells of context around the few cells marked. At a slide
edge the window is shifted inside the slide rather than shrunk; only a slide smaller than the window clips it.
Only the task's own cells carry marks: other cells visible in the window belong to other tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from label_config import NEUTRAL_LABEL, CellBox, TileTask, cell_to_region, rank_to_score

DEFAULT_MIN_PX = 256


def task_window(boxes: np.ndarray, slide_wh: tuple[int, int], min_side: float, margin: float = 0.0
                ) -> tuple[int, int, int, int]:
    """Level-0 ``(x0, y0, w, h)`` of the window showing ``boxes``.

    ``boxes``: int (N, 4) level-0 ``x0, y0, w, h`` of the task's cells (N >= 1). The window is centred on
    the boxes' bounding box, each side ``max(min_side, bounding side + 2 * margin)`` (level-0 px), then
    moved inside ``slide_wh`` (width, height); a side longer than the slide is cut to the slide.
    """
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    lo, hi = b[:, :2].min(axis=0), (b[:, :2] + b[:, 2:]).max(axis=0)
    out = []
    for axis in (0, 1):
        limit = int(slide_wh[axis])
        side = min(limit, math.ceil(max(min_side, hi[axis] - lo[axis] + 2 * margin)))
        start = math.floor((lo[axis] + hi[axis]) / 2 - side / 2)
        out.append((min(max(start, 0), limit - side), side))
    (x0, w), (y0, h) = out
    return x0, y0, w, h


def build_tiles(
    slide_id: str,
    cell_ids: Sequence[str],
    tile_ids: Sequence[str],
    boxes: np.ndarray,
    slide_wh: tuple[int, int],
    mpp: float | None,
    image_url: Any,
    min_px: int = 0,
    downsample: float = 1.0,
    context_side: float = 0.0,
) -> list[TileTask]:
    """One :class:`TileTask` per distinct tile id, in first-appearance order of ``tile_ids``.

    ``boxes`` is int (N, 4) ``x0, y0, w, h`` in level-0 px; ``slide_wh`` is (width, height). Each tile image
    is the :func:`task_window` of its cells: at least ``min_px`` tile pixels (``min_px * downsample`` level-0
    px, ``downsample`` being the tiles' level-0 px per tile px) and ``context_side`` level-0 px a side, holding
    every cell box with a margin of about one nucleus, so no box is cut at the image edge.
    ``image_url(slide_id, tile_id)`` gives the task's image URL. Tiles come out at level-0 size
    (``downsample`` 1); :func:`preprocess.tiles.images.fit_tiles` sizes their PNGs.
    """
    order: dict[str, list[int]] = {}
    for i, tid in enumerate(tile_ids):
        order.setdefault(str(tid), []).append(i)
    min_side = max(float(context_side), min_px * downsample)
    return [_tile(slide_id, tid, idx, cell_ids, boxes, slide_wh, mpp, image_url, min_side)
            for tid, idx in order.items()]


def _tile(slide_id, tile_id, idx, cell_ids, boxes, slide_wh, mpp, image_url, min_side) -> TileTask:
    b = boxes[idx]
    margin = max(8, float(np.median(np.maximum(b[:, 2], b[:, 3]))))
    x0, y0, w, h = task_window(b, slide_wh, min_side, margin)
    cells = tuple(CellBox(str(cell_ids[i]), *map(int, boxes[i])) for i in idx)
    return TileTask(tile_id, slide_id, image_url(slide_id, tile_id), x0, y0, w, h, 1.0, mpp, cells)


def task_payload(tile: TileTask, model_version: str, score: float, neutral: str = NEUTRAL_LABEL) -> dict[str, Any]:
    """A task to import: its data plus one prediction with every cell box drawn with the ``neutral`` label
    ("No class yet"; a project made before that name passes its own, :attr:`label_config.LabelSet.neutral`)."""
    result = [cell_to_region(c, tile, neutral) for c in tile.cells]
    return {
        "data": tile.to_task_data(),
        "predictions": [{"model_version": model_version, "score": float(score), "result": result}],
    }


def task_payloads(
    tiles: Sequence[TileTask], model_version: str, score_offset: float = 0.0, neutral: str = NEUTRAL_LABEL
) -> list[dict[str, Any]]:
    """Tasks in the given order, served in that order (score = rank, lowest first), after ``score_offset``."""
    scores = rank_to_score(len(tiles)) + score_offset
    return [task_payload(t, model_version, s, neutral) for t, s in zip(tiles, scores)]
