"""Predictor: class suggestions for tasks Label Studio asks about, from cached embeddings.

Answers ``/predict`` without touching the backbone: every preprocessed cell already has its embedding,
so a prediction is one small matrix product through the head of the project's latest model version. A model
trained with spatial context (its sidecar's ``context``) gets the same context features and smoothing as
in the retrain that pushed the queue's predictions (:class:`ml_backend.suggestions.context.CellFeatures`),
so a task opened outside the pushed top gets the suggestions a pushed prediction would have shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.storage import Storage
from label_config import TileTask, parse_label_set, version_name
from ml_backend.model.learners import Learner
from ml_backend.model.store import ModelStore
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.embeddings import EmbeddingIndex
from ml_backend.suggestions.predictions import tile_prediction
from preprocess.layout import DataLayout

# Served after every ranked task: /predict answers are stored as predictions and must not jump the queue.
PREDICT_SCORE = 1.0


class Predictor:
    def __init__(self, layout: DataLayout, tables: Storage) -> None:
        """``layout``: where model versions are; ``tables``: where ``hali preprocess`` put the cell tables."""
        self._layout = layout
        self._tables = tables
        self._index = EmbeddingIndex(tables)
        self._heads: dict[int, tuple[int, Learner, CellFeatures]] = {}
        self._features: dict[ContextSpec | None, CellFeatures] = {}  # one per spec: graphs stay in memory

    def current_version(self, project_id: int) -> str:
        return version_name(ModelStore(self._layout.models_dir(project_id)).latest_version())

    def predict(self, project_id: int, tasks: Sequence[dict[str, Any]], label_config: str) -> list[dict[str, Any]]:
        """One prediction per task, in order; raises TaskDataError / UnknownCellError / NotPreprocessedError."""
        labels = parse_label_set(label_config)
        version, head, features = self._latest_head(project_id)
        name = version_name(version)
        results = []
        for task in tasks:
            tile = TileTask.from_task_data(task.get("data") or {})
            rows = features.rows(tile)  # also checks that every cell is known
            proba = features.proba(head, tile.slide_id, rows, suggest=True) if head is not None else None
            results.append(tile_prediction(tile, proba, labels.targets, name, PREDICT_SCORE, labels.neutral))
        return results

    def _latest_head(self, project_id: int) -> tuple[int, Learner | None, CellFeatures]:
        store = ModelStore(self._layout.models_dir(project_id))
        latest = store.latest_version()
        if latest == 0:
            return 0, None, self._cell_features(None)
        cached = self._heads.get(project_id)
        if cached is None or cached[0] != latest:
            head, meta = store.load(latest)
            cached = (latest, head, self._cell_features(ContextSpec.from_meta(meta)))
            self._heads[project_id] = cached
        return cached

    def _cell_features(self, spec: ContextSpec | None) -> CellFeatures:
        if spec not in self._features:
            self._features[spec] = CellFeatures(self._index, self._tables, spec)
        return self._features[spec]
