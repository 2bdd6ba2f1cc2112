"""A retrain pushes its prediction to the top of the queue only, so its cost does not grow with the project,
and Label Studio still serves the top-ranked task."""

from __future__ import annotations

import pytest
from hali_backend import label_next_task, preprocess_settings

from adapters.label_studio import LabelStudioGateway
from label_config import version_name
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


def test_only_the_top_k_open_tasks_get_the_new_version(hali_environ, label_studio, ls_client, redis_conn, ihc_slide,
                                                       new_annotator):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = run_preprocess(ihc_slide, "HALI top k", preprocess_settings(classes="Positive,Negative", mpp=0.25,
                                                                           cells_per_task=8), gateway)
    assert result.n_tiles > 6
    annotator = new_annotator()
    label_next_task(annotator, result.project_id)

    report = run_retrain(result.project_id, BackendSettings(predictions_top_k=3), gateway,
                         RedisLabelStore(redis_conn))
    with_v1 = [t.id for t in ls_client.tasks.list(project=result.project_id, fields="all")
               if any(_version(p) == version_name(1) for p in t.predictions)]
    assert sorted(with_v1) == sorted(report.next_task_ids[:3])
    assert annotator.next_task(result.project_id)["id"] == report.next_task_ids[0]
    assert set(report.metrics["seconds_by_phase"]) == {"read", "cells", "fit", "rank", "push", "switch", "fill",
                                                            "prune"}


def _version(prediction) -> str | None:
    return prediction.get("model_version") if isinstance(prediction, dict) else prediction.model_version
