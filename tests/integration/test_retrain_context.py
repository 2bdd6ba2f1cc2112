"""A retrain with spatial context (HALI_CONTEXT=true): the slide's neighbour graph is cached beside its cell table, the
model's sidecar records the context it was trained with, and ``/predict`` shows a task what the retrain pushed."""

from __future__ import annotations

import pytest
from hali_backend import label_next_task, preprocess_settings

from adapters.label_studio import LabelStudioGateway
from label_config import TileTask, version_name
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.model.store import ModelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.context import ContextSpec, context_key
from ml_backend.suggestions.embeddings import tables_storage
from ml_backend.suggestions.predictor import Predictor
from preprocess.layout import DataLayout
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


def test_predict_shows_what_the_context_retrain_pushed(hali_environ, label_studio, ls_client, redis_conn, ihc_slide,
                                                       new_annotator):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = run_preprocess(ihc_slide, "HALI context", preprocess_settings(classes="Positive,Negative", mpp=0.25,
                                                                             cells_per_task=8), gateway)
    annotator = new_annotator()
    task = label_next_task(annotator, result.project_id)

    settings = BackendSettings(predictions_top_k=3, context=True)
    report = run_retrain(result.project_id, settings, gateway, RedisLabelStore(redis_conn))

    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    _, meta = ModelStore(layout.models_dir(result.project_id)).load()
    assert ContextSpec.from_meta(meta) == ContextSpec()
    slide_ids = {TileTask.from_task_data(task["data"]).slide_id}
    assert all((settings.data_dir / context_key(s, ContextSpec())).is_file() for s in slide_ids)
    pushed = [(t.id, p) for t in ls_client.tasks.list(project=result.project_id, fields="all") for p in t.predictions
              if _get(p, "model_version") == version_name(report.version)]
    assert pushed
    predictor = Predictor(layout, tables_storage(settings))
    config = gateway.get_project(result.project_id).label_config
    for task_id, prediction in pushed:
        answer = predictor.predict(result.project_id, [ls_client.tasks.get(id=task_id).model_dump()], config)[0]
        assert _labels(answer["result"]) == _labels(_get(prediction, "result"))
        assert [r["score"] for r in answer["result"]] == pytest.approx([r["score"] for r in _get(prediction, "result")],
                                                                       rel=1e-4)


def _labels(result: list[dict]) -> list[tuple[str, str]]:
    return [(r["id"], r["value"]["rectanglelabels"][0]) for r in result]


def _get(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name)
