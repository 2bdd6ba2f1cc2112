"""From segmented nuclei and a tile plan to Label Studio tasks (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from label_config import NEUTRAL_LABEL, CellBox, TileTask, cell_to_region, rank_to_score


def build_tiles(
    slide_id: str,
    cell_ids: Sequence[str],
    tile_ids: Sequence[str],
    boxes: np.ndarray,
    slide_wh: tuple[int, int],
    mpp: float | None,
    image_url: Any,
) -> list[TileTask]:
    """One :class:`TileTask` per distinct tile id, in first-appearance order of ``tile_ids``.

    ``boxes`` is int (N, 4) ``x0, y0, w, h`` in level-0 px; ``slide_wh`` is (width, height). Each tile image
    is the bounding box of its cells' boxes plus a small context margin, clipped to the slide, so no box
    is cut at the image edge. ``image_url(slide_id, tile_id)`` gives the task's image URL.
    """
    order: dict[str, list[int]] = {}
    for i, tid in enumerate(tile_ids):
        order.setdefault(str(tid), []).append(i)
    return [_tile(slide_id, tid, idx, cell_ids, boxes, slide_wh, mpp, image_url) for tid, idx in order.items()]


def _tile(slide_id, tile_id, idx, cell_ids, boxes, slide_wh, mpp, image_url) -> TileTask:
    b = boxes[idx]
    margin = int(max(8, np.median(np.maximum(b[:, 2], b[:, 3]))))
    x0 = max(0, int(b[:, 0].min()) - margin)
    y0 = max(0, int(b[:, 1].min()) - margin)
    x1 = min(slide_wh[0], int((b[:, 0] + b[:, 2]).max()) + margin)
    y1 = min(slide_wh[1], int((b[:, 1] + b[:, 3]).max()) + margin)
    cells = tuple(CellBox(str(cell_ids[i]), *map(int, boxes[i])) for i in idx)
    return TileTask(tile_id, slide_id, image_url(slide_id, tile_id), x0, y0, x1 - x0, y1 - y0, 1.0, mpp, cells)


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
