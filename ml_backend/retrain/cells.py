"""The cells a retrain trains on and ranks, gathered with array operations, and what a worker keeps of them.

A project's tiles fix, for every cell of every task, its task and its row in its slide's cell table: a
:class:`CellLayout` (N,) computed once per tile set and cell tables, and kept in the worker process between
retrains (:class:`LayoutCache`, a few projects at most), with the tables and neighbour graphs its
:class:`~ml_backend.suggestions.context.CellFeatures` holds (:func:`cell_features`). A retrain then
touches Python objects only for the tasks that hold labels; everything else is a mask or a gather over
(N,) arrays, so its cost at 1M cells is a few array passes, not a million dictionary lookups.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from adapters.storage import open_output_storage
from label_config import TileTask
from ml_backend.errors import NotPreprocessedError
from ml_backend.labels.tile_store import cell_counts, slide_ids
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.drawn_cells import DrawnCellEmbedder
from ml_backend.suggestions.embeddings import EmbeddingIndex

log = logging.getLogger(__name__)

MAX_CACHED_PROJECTS = 4  # layouts a worker keeps: about 40 MB per million cells each


class CellIndex(Protocol):
    """What :func:`gather_cells` needs of :class:`CellFeatures`."""

    def rows(self, tile: TileTask) -> np.ndarray: ...
    def features(self, slide_id: str, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Cells:
    """Every cell of the project that matters for this round, in one array per field."""

    features: np.ndarray  # float32 (N, D)
    task_ids: np.ndarray  # int (N,)
    y: np.ndarray  # int (N,): target index (classes, then "Not a nucleus"), -1 when unlabelled
    rows: np.ndarray | None = None  # int (N,): row in its slide's cell table, -1 for a cell drawn by hand
    slides: np.ndarray | None = None  # str (N,): slide id of each cell, "" for a cell drawn by hand


@dataclass(frozen=True, eq=False)
class CellLayout:
    """Every cell of every task of a project, task after task, each task's cells in ``tile.cells`` order.

    ``task_ids`` int64 (N,), ``rows`` int64 (N,) row in the slide's cell table, ``slide_codes`` int32 (N,)
    index into ``slides``; ``starts``: task id -> the position of its first cell.
    """

    task_ids: np.ndarray
    rows: np.ndarray
    slide_codes: np.ndarray
    slides: tuple[str, ...]
    starts: dict[int, int]

    @classmethod
    def build(cls, tiles: Mapping[int, TileTask], index: CellIndex) -> CellLayout:
        """The layout of ``tiles``, read one tile at a time (a :class:`TileStore` builds each when read)."""
        task_slides = slide_ids(tiles)
        slides = tuple(dict.fromkeys(task_slides))
        code = {s: i for i, s in enumerate(slides)}
        rows = [index.rows(tiles[task_id]) for task_id in tiles]
        sizes = np.array([len(r) for r in rows], np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]] if len(sizes) else np.zeros(0, np.int64)
        return cls(np.repeat(np.fromiter(tiles, np.int64, len(tiles)), sizes),
                   np.concatenate(rows) if rows else np.zeros(0, np.int64),
                   np.repeat(np.array([code[s] for s in task_slides], np.int32), sizes),
                   slides, dict(zip(tiles, starts.tolist())))

    def __len__(self) -> int:
        return len(self.task_ids)


class LayoutCache:
    """A worker's :class:`CellLayout` per project, rebuilt when the tiles or a slide's cell table change
    (the mirror hands out the same tiles object until its files change); at most ``max_projects``."""

    def __init__(self, max_projects: int = MAX_CACHED_PROJECTS) -> None:
        self._max = max_projects
        self._entries: OrderedDict[int, tuple[Any, tuple[Any, ...], CellLayout]] = OrderedDict()

    def get(self, project_id: int, tiles: Mapping[int, TileTask], features: CellFeatures) -> CellLayout:
        tables = tuple(features.index.table(s) for s in dict.fromkeys(slide_ids(tiles)))
        cached = self._entries.get(project_id)
        if cached is not None and (cached[0] is tiles or cached[0] == tiles) and len(cached[1]) == len(tables) \
                and all(a is b for a, b in zip(cached[1], tables)):
            self._entries.move_to_end(project_id)
            return cached[2]
        layout = CellLayout.build(tiles, features)
        self._entries[project_id] = (tiles, tables, layout)
        self._entries.move_to_end(project_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        log.info("project %s: cell layout of %d cells in %d tasks built", project_id, len(layout), len(tiles))
        return layout


LAYOUTS = LayoutCache()  # the worker process's: kept between the retrains it runs in-process


def cell_features(settings: BackendSettings) -> CellFeatures:
    """The process's :class:`CellFeatures` for these settings: cell tables (re-read when their file changes)
    and neighbour graphs stay in memory between retrains."""
    return _cell_features(settings.storage_url, Path(settings.data_dir), Path(settings.ls_files_root),
                          settings.s3_endpoint_url, ContextSpec.from_settings(settings))


@lru_cache(maxsize=4)
def _cell_features(storage_url: Any, data_dir: Path, files_root: Path, endpoint: Any,
                   spec: ContextSpec | None) -> CellFeatures:
    tables = open_output_storage(storage_url, data_dir, files_root, endpoint).tables
    return CellFeatures(EmbeddingIndex(tables), tables, spec)


def gather_cells(layout: CellLayout, tiles: Mapping[int, TileTask], open_ids: list[int], labelled_ids: set[int],
                 labels: dict[str, str], targets: list[str], index: CellIndex) -> Cells:
    """Labelled cells (of the tasks ``labelled_ids``) plus every cell of an open task; ``y`` indexes ``targets``."""
    class_index = {c: i for i, c in enumerate(targets)}
    y = np.full(len(layout), -1, np.int64)
    for task_id in labelled_ids:
        if task_id in layout.starts:
            first, cells = layout.starts[task_id], tiles[task_id].cells
            y[first : first + len(cells)] = [class_index.get(labels.get(c.cell_id, ""), -1) for c in cells]
    keep = np.isin(layout.task_ids, np.asarray(open_ids, np.int64)) | (y >= 0)
    rows, codes = layout.rows[keep], layout.slide_codes[keep]
    parts = {code: index.features(layout.slides[code], rows[codes == code]) for code in np.unique(codes).tolist()}
    if len({f.shape[1] for f in parts.values()}) > 1:
        raise NotPreprocessedError(
            f"the project's slides were embedded with different featurizers ({sorted({f.shape[1] for f in parts.values()})}"
            " features); re-run `hali preprocess` on every slide with the same --featurizer and --checkpoint"
        )
    dims = next(iter(parts.values())).shape[1] if parts else 0
    features = np.empty((int(keep.sum()), dims), np.float32)
    for code, part in parts.items():
        features[codes == code] = part
    return Cells(features, layout.task_ids[keep], y[keep], rows, np.array(layout.slides, dtype=str)[codes]
                 if len(layout.slides) else np.zeros(0, str))


def add_drawn_cells(cells: Cells, records, tiles: Mapping[int, TileTask], targets: list[str],
                    embedder: DrawnCellEmbedder, index: CellFeatures) -> Cells:
    """``cells`` plus the labelled boxes annotators drew by hand (task id -1: they are never ranked)."""
    by_slide: dict[str, list[tuple[list[int], str]]] = {}
    for rec in records.values():
        for drawn in rec.drawn:
            by_slide.setdefault(tiles[rec.task_id].slide_id, []).append((drawn["box"], drawn["label"]))
    class_index = {c: i for i, c in enumerate(targets)}
    feats, ys = [cells.features], [cells.y]
    for slide_id, items in by_slide.items():
        f = embedder.embed(slide_id, [box for box, _ in items])
        if f is None:
            continue
        f = index.drawn_features(slide_id, np.array([box for box, _ in items], np.float64), f)
        if cells.features.size and f.shape[1] != cells.features.shape[1]:
            log.warning("slide %s: %d hand-drawn cells skipped: %d features, the project's cells have %d",
                        slide_id, len(items), f.shape[1], cells.features.shape[1])
            continue
        feats.append(f)
        ys.append(np.array([class_index[label] for _, label in items], dtype=np.int64))
    n_new = sum(len(y) for y in ys[1:])
    if n_new == 0:
        return cells
    features = np.concatenate([f for f in feats if f.size]).astype(np.float32)
    return Cells(features, np.concatenate([cells.task_ids, np.full(n_new, -1)]), np.concatenate(ys),
                 None if cells.rows is None else np.concatenate([cells.rows, np.full(n_new, -1)]),
                 None if cells.slides is None else np.concatenate([cells.slides, np.full(n_new, "")]))


def first_rows(cells: Cells) -> dict[int, int]:
    """Task id -> the row of ``cells`` holding its first cell (an open task's cells are contiguous rows)."""
    task_ids, first = np.unique(cells.task_ids, return_index=True)
    return dict(zip(task_ids.tolist(), first.tolist()))


def sample_open_tasks(open_ids: list[int], keep: list[int], tiles: Mapping[int, TileTask], max_cells: int,
                      seed: int) -> list[int]:
    """The open tasks a retrain ranks: all of them when they hold at most ``max_cells`` cells (or ``max_cells``
    is 0), else ``keep`` plus a seeded random share of the others holding about ``max_cells`` cells; in id order.

    The strategy picks ``HALI_QUERY_BUDGET`` cells (100) from k-means clusters of its pool: a random 100,000
    cells describe the project's feature space as well as a million, at a tenth of the cost.
    """
    n_cells = int(cell_counts(tiles, open_ids).sum())
    if max_cells <= 0 or n_cells <= max_cells:
        return open_ids
    n_tasks = max(1, int(len(open_ids) * max_cells / n_cells))
    chosen = np.random.default_rng(seed).permutation(np.asarray(open_ids, np.int64))[:n_tasks]
    return sorted(set(chosen.tolist()) | set(keep))
