"""HALI_STRATEGY=relevance end to end: a real Label Studio serves tiles in the order of the paper's tile score.

preprocess a slide -> an annotator labels one cell Positive and five Negative -> ``run_retrain`` with the
relevance strategy -> the saved head, the rare class (Positive: fewest labels) and Label Studio's next task
agree with the tile scores recomputed here from the saved head.
"""

from __future__ import annotations

import numpy as np
import pytest
from hali_backend import preprocess_settings
from redis import Redis

from adapters.label_studio import LabelStudioGateway
from label_config import TileTask
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.model.store import ModelStore
from ml_backend.ordering.relevance import RelevanceParams, cell_scores
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from ml_backend.suggestions.context import CellFeatures, ContextSpec
from ml_backend.suggestions.embeddings import EmbeddingIndex, tables_storage
from preprocess.layout import DataLayout
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


def test_relevance_serves_the_tile_with_the_highest_tile_score(
    hali_environ, label_studio, redis_url, redis_conn, ihc_slide, new_annotator, tmp_path, monkeypatch
):
    # No dropout: every pass is the same, U_c = 1 and only the rare term scores, so the tile scores can be
    # recomputed here exactly (MC masks depend on the row order of the job's cell table).
    # exploit_share 0: the strategy's own order, no task moved to the front for confident suggestions
    settings = BackendSettings(strategy="relevance", mc_dropout=0.0, mc_passes=4, exploit_share=0.0)
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pre = preprocess_settings(classes="Positive,Negative", cells_per_task=10, mpp=0.25)
    pid = run_preprocess(ihc_slide, "HALI relevance", pre, gateway).project_id

    annotator = new_annotator()
    first = annotator.next_task(pid)
    prediction = first["predictions"][0]
    result = [dict(r, value=dict(r["value"])) for r in prediction["result"]]  # the rest stay "No class yet"
    for i, region in enumerate(result[:6]):
        region["value"]["rectanglelabels"] = ["Positive" if i == 0 else "Negative"]
        region["origin"] = "prediction-changed"
    annotator.submit(first["id"], result, lead_time=5.0, parent_prediction=prediction["id"], project_id=pid)

    report = run_retrain(pid, settings, gateway, RedisLabelStore(Redis.from_url(redis_url)))

    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    head, meta = ModelStore(layout.models_dir(pid)).load(report.version)
    assert meta["strategy"] == "relevance" and head.dropout == settings.mc_dropout
    storage = tables_storage(settings)
    index = CellFeatures(EmbeddingIndex(storage), storage, ContextSpec.from_meta(meta))  # the features it was fit on
    score = {}
    for task in gateway.iter_tasks(pid):
        if task["annotations"]:
            continue
        proba = head.predict_proba(index.tile_features(TileTask.from_task_data(task["data"])))
        score[task["id"]] = float(cell_scores(proba, RelevanceParams(rare_class=0)).sum())  # 0: Positive
    ranked = [score[t] for t in report.next_task_ids]
    assert ranked[0] == max(score.values()) > 0, "the top task holds the most cells flagged Positive"
    assert ranked == sorted(ranked, reverse=True)
    assert annotator.next_task(pid)["id"] == report.next_task_ids[0], "Label Studio serves the top task"
    np.testing.assert_equal(report.n_labels, 6)
