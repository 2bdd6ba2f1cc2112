"""CellFeatures: what the learner sees of a preprocessed cell, and the probabilities shown for it.

With spatial context features on (``HALI_CONTEXT``, a :class:`ContextSpec` with ``features``), a cell is
described by its own features, the mean features of its ``neighbours`` nearest cells of the same slide and the
number of cells within ``radius_um`` (:mod:`ml_backend.model.context`). With ``smooth_alpha`` < 1
(``HALI_SMOOTH_ALPHA``, with or without the context features) the probabilities shown for a cell are
smoothed with its neighbours' (``smooth_alpha`` its own). Neighbours are found among *every* cell of the slide's cell table,
not only those of open or labelled tasks.

The neighbour graph depends on the cells' positions only (not on the featurizer), so it is computed once per
slide (one KD-tree: about 3 s per million cells) and cached beside the cell table, in the same storage::

    slides/<slide_id>/context-k<k>-r<radius_um>.npz   neighbours int32 (N, k), density float32 (N,),
                                                      mpp, and a hash of the table's boxes

A re-run of preprocessing that changes the boxes (or the slide's mpp) makes the cache stale: it is rebuilt.
Writes are whole objects (an atomic rename locally), so concurrent workers at worst both compute it. In a
process the graph is also kept in memory for as long as the cell table it was built from.

The retrain (:mod:`ml_backend.retrain.run`), ``/predict`` (:mod:`ml_backend.suggestions.predictor`) and
``hali classify`` all go through :meth:`CellFeatures.proba`, so a task opened outside the pushed top of
the queue gets the same suggestions a pushed prediction would have shown. The model's sidecar records the
spec it was trained with (:meth:`ContextSpec.to_meta`); a model without one sees plain features.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from adapters.errors import AdapterError
from adapters.storage import Storage
from label_config import TileTask
from ml_backend.errors import UnknownCellError
from ml_backend.model.context import (
    box_centroids,
    context_at,
    context_of_rows,
    local_density,
    smooth_rows,
    spatial_neighbours,
)
from ml_backend.model.learners import Learner
from ml_backend.suggestions.embeddings import EmbeddingIndex
from preprocess.errors import PreprocessError
from preprocess.layout import read_slide_meta, skip_tile
from preprocess.tiles.cells import CellTable

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
FALLBACK_MPP = 0.25  # a slide whose tasks and tasks.json carry no mpp (made before mpp was recorded)
_CHUNK_ROWS = 65_536  # context rows built at a time: (chunk, 2d + 1) float32 stays a few tens of MiB


@dataclass(frozen=True)
class ContextSpec:
    """Spatial context of a model: ``neighbours`` per cell, density ``radius_um``, ``smooth_alpha`` (1: none),
    and whether the learner sees the context ``features`` (else only the shown probabilities are smoothed)."""

    neighbours: int = 8
    radius_um: float = 25.0
    smooth_alpha: float = 0.5
    features: bool = True

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ContextSpec | None:
        """The spec a model's sidecar records under ``context``; None for a model trained without context."""
        spec = meta.get("context")
        if not spec:
            return None
        return cls(int(spec["neighbours"]), float(spec["radius_um"]), float(spec["smooth_alpha"]),
                   bool(spec.get("features", True)))

    @classmethod
    def from_settings(cls, settings: Any) -> ContextSpec | None:
        """From ``HALI_CONTEXT``, ``HALI_CONTEXT_NEIGHBOURS``, ``HALI_CONTEXT_RADIUS_UM``, ``HALI_SMOOTH_ALPHA``;
        None when neither context features nor smoothing is asked for."""
        if not settings.context and settings.smooth_alpha == 1.0:
            return None
        return cls(settings.context_neighbours, settings.context_radius_um, settings.smooth_alpha, settings.context)


@dataclass(frozen=True)
class SlideGraph:
    """Every cell of one slide: ``neighbours`` int32 (N, k) rows of its cell table, ``density`` float32 (N,)."""

    neighbours: np.ndarray
    density: np.ndarray


def context_key(slide_id: str, spec: ContextSpec) -> str:
    return f"slides/{slide_id}/context-k{spec.neighbours}-r{spec.radius_um:g}.npz"


class CellFeatures:
    """Features and shown probabilities of cells of the cell tables in ``index``, with ``spec``'s context.

    ``spec`` None: the table's features and the learner's probabilities, unchanged.
    """

    def __init__(self, index: EmbeddingIndex, storage: Storage, spec: ContextSpec | None) -> None:
        self.index = index
        self.spec = spec
        self._storage = storage
        self._graphs: dict[str, tuple[CellTable, SlideGraph]] = {}  # slide -> (the table it was built from, graph)
        self._mpp: dict[str, float] = {}

    def rows(self, tile: TileTask) -> np.ndarray:
        """Rows (n,) int64 of ``tile``'s cells in its slide's cell table; also remembers the slide's mpp."""
        if tile.mpp:
            self._mpp.setdefault(tile.slide_id, float(tile.mpp))
        table = self.index.table(tile.slide_id)
        try:
            return table.index_of([c.cell_id for c in tile.cells])
        except KeyError as exc:
            raise UnknownCellError(
                f"slide {tile.slide_id}: {exc.args[0]}; the task was not made from this data dir's cell table "
                "(re-run `hali preprocess` or point HALI_DATA_DIR at the right folder)") from None

    def features(self, slide_id: str, rows: np.ndarray) -> np.ndarray:
        """What the learner sees of the cells ``rows`` of one slide: (n, D) float32, D = 2d + 1 with context."""
        table = self.index.table(slide_id)
        if self.spec is None or not self.spec.features:
            return table.features[rows]
        graph = self.graph(slide_id)
        return context_of_rows(table.features, graph.neighbours, graph.density, rows)

    def tile_features(self, tile: TileTask) -> np.ndarray:
        return self.features(tile.slide_id, self.rows(tile))

    def drawn_features(self, slide_id: str, boxes_px: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Features (M, D) of cells drawn by hand (level-0 boxes (M, 4) (x0, y0, w, h), own features (M, d))."""
        if self.spec is None or not self.spec.features:
            return np.asarray(features, np.float32)
        table = self.index.table(slide_id)
        return context_at(box_centroids(boxes_px), features, box_centroids(table.boxes), table.features,
                          self._slide_mpp(slide_id), self.spec.neighbours, self.spec.radius_um)

    def proba(self, head: Learner, slide_id: str, rows: np.ndarray, suggest: bool) -> np.ndarray:
        """(n, K) float32 probabilities of the cells ``rows`` of one slide: ``suggest`` those shown to the
        annotator (else those the strategies rank), smoothed over spatial neighbours with the spec's alpha."""
        def proba_of(idx: np.ndarray) -> np.ndarray:
            chunks = [self._head_proba(head, self.features(slide_id, idx[s : s + _CHUNK_ROWS]), suggest)
                      for s in range(0, len(idx), _CHUNK_ROWS)]
            return np.concatenate(chunks) if chunks else np.zeros((0, _n_outputs(head)), np.float32)

        if self.spec is None or self.spec.smooth_alpha == 1.0:
            return proba_of(np.asarray(rows, np.int64))
        return smooth_rows(proba_of, self.graph(slide_id).neighbours, rows, self.spec.smooth_alpha)

    def proba_both(self, head: Learner, slide_id: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`proba` of the cells ``rows`` for the strategies and as shown, (n, K) float32 each, from one pass
        of the head and one smoothing (it is linear: both are smoothed as one (n, 2K) array)."""
        def both_of(idx: np.ndarray) -> np.ndarray:
            chunks = []
            for s in range(0, len(idx), _CHUNK_ROWS):
                p = head.predict_proba(self.features(slide_id, idx[s : s + _CHUNK_ROWS]))
                chunks.append(np.concatenate([p, head.suggest_from_proba(p)], axis=1))
            return np.concatenate(chunks) if chunks else np.zeros((0, 2 * _n_outputs(head)), np.float32)

        rows = np.asarray(rows, np.int64)
        alpha = 1.0 if self.spec is None else self.spec.smooth_alpha
        both = both_of(rows) if alpha == 1.0 else smooth_rows(both_of, self.graph(slide_id).neighbours, rows, alpha)
        k = both.shape[1] // 2
        return np.ascontiguousarray(both[:, :k]), np.ascontiguousarray(both[:, k:])

    def tile_proba(self, head: Learner, tile: TileTask, suggest: bool = True) -> np.ndarray:
        """(n_cells, K) probabilities of ``tile``'s cells, in ``tile.cells`` order."""
        return self.proba(head, tile.slide_id, self.rows(tile), suggest)

    def graph(self, slide_id: str) -> SlideGraph:
        """The slide's neighbour graph: from memory, else from the cache object, else computed and cached."""
        table = self.index.table(slide_id)
        cached = self._graphs.get(slide_id)
        if cached is not None and cached[0] is table:
            return cached[1]
        graph = self._load_or_build(slide_id, table)
        self._graphs[slide_id] = (table, graph)
        return graph

    def _load_or_build(self, slide_id: str, table: CellTable) -> SlideGraph:
        assert self.spec is not None
        key, mpp, tag = context_key(slide_id, self.spec), self._slide_mpp(slide_id), _boxes_tag(table)
        graph = self._read(key, mpp, tag, len(table))
        if graph is not None:
            return graph
        xy = box_centroids(table.boxes)
        graph = SlideGraph(spatial_neighbours(xy, k=self.spec.neighbours).astype(np.int32),
                           local_density(xy, mpp, radius_um=self.spec.radius_um))
        buf = io.BytesIO()
        np.savez(buf, format=CACHE_FORMAT, neighbours=graph.neighbours, density=graph.density, mpp=mpp,
                 boxes_tag=tag)
        self._storage.put_bytes(key, buf.getvalue())
        log.info("slide %s: spatial neighbours of %d cells computed and cached at %s", slide_id, len(table),
                 self._storage.location(key))
        return graph

    def _read(self, key: str, mpp: float, tag: str, n_cells: int) -> SlideGraph | None:
        """The cached graph, or None when absent, unreadable or made from other boxes, mpp or k."""
        if not self._storage.exists(key):
            return None
        try:
            with np.load(io.BytesIO(self._storage.get_bytes(key)), allow_pickle=False) as z:
                ok = (int(z["format"]) == CACHE_FORMAT and str(z["boxes_tag"]) == tag
                      and abs(float(z["mpp"]) - mpp) < 1e-9 and z["neighbours"].shape == (n_cells, self.spec.neighbours))
                return SlideGraph(z["neighbours"], z["density"]) if ok else None
        except (AdapterError, ValueError, KeyError, OSError) as exc:
            log.warning("%s is not a readable context cache (%s); computing it again", self._storage.location(key), exc)
            return None

    def _slide_mpp(self, slide_id: str) -> float:
        """The slide's level-0 um/px: from its tasks, else its ``tasks.json``, else :data:`FALLBACK_MPP`."""
        if slide_id not in self._mpp:
            try:
                mpp = read_slide_meta(self._storage, slide_id, skip_tile).get("mpp")
            except (PreprocessError, AdapterError):
                mpp = None
            if not mpp:
                log.warning("slide %s records no mpp; local density counted as if at %s um/px", slide_id, FALLBACK_MPP)
            self._mpp[slide_id] = float(mpp or FALLBACK_MPP)
        return self._mpp[slide_id]

    @staticmethod
    def _head_proba(head: Learner, x: np.ndarray, suggest: bool) -> np.ndarray:
        return head.suggest_proba(x) if suggest else head.predict_proba(x)


def _boxes_tag(table: CellTable) -> str:
    return hashlib.blake2b(np.ascontiguousarray(table.boxes).tobytes(), digest_size=8).hexdigest()


def _n_outputs(head: Learner) -> int:
    return int(getattr(head, "n_classes", 0))
