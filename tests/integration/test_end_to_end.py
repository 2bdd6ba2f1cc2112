"""The whole HALI loop against a real Label Studio, a real redis-server and a real rq worker.

preprocess a slide -> a second (non-admin) user takes the next task -> labels cells and submits as the UI
does -> the webhook lands -> the worker retrains -> the version rises -> the next served task is the top of
the Coreset ranking, and the predictions it shows carry the new version. Then a second pathologist gets
another task, and the export gives every label back in slide coordinates.
"""

from __future__ import annotations

import pytest
from hali_backend import preprocess_settings, serve_backend
from redis import Redis
from rq import Queue, SimpleWorker

from adapters.label_studio import LabelStudioGateway
from label_config import NEUTRAL_LABEL, TileTask, parse_classes, region_to_slide_box, version_name
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration
CLASSES = "Positive,Negative"


@pytest.fixture
def hali(hali_environ, label_studio, redis_url, redis_conn, tmp_path, monkeypatch):
    settings = BackendSettings()
    with serve_backend(settings) as url:
        yield settings, url


def _run_worker(redis_url: str, queue_name: str) -> None:
    redis = Redis.from_url(redis_url)
    SimpleWorker([Queue(queue_name, connection=redis)], connection=redis).work(burst=True)


def _label_cells(task: dict, n: int) -> tuple[list[dict], int]:
    """The annotator's result: the shown prediction with ``n`` cells given a class (the rest untouched)."""
    prediction = task["predictions"][0]
    result = [dict(r, value=dict(r["value"])) for r in prediction["result"]]
    for i, region in enumerate(result[:n]):
        region["value"]["rectanglelabels"] = ["Positive" if i % 2 else "Negative"]
        region["origin"] = "prediction-changed"
    return result, prediction["id"]


def test_label_retrain_and_queue_follow_the_ranking(hali, label_studio, ls_client, redis_url, ihc_slide, new_annotator):
    settings, backend_url = hali
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pre = preprocess_settings(classes=CLASSES, cells_per_task=10, mpp=0.25, backend_url=backend_url)
    result = run_preprocess(ihc_slide, "HALI e2e", pre, gateway)
    pid = result.project_id
    assert result.n_tiles > 5 and result.n_imported == result.n_tiles

    project = ls_client.projects.get(id=pid)
    assert project.model_version == version_name(0)
    assert parse_classes(project.label_config) == ["Positive", "Negative"]
    assert [b.url for b in ls_client.ml.list(project=pid)] == [backend_url]

    annotator = new_annotator()
    first = annotator.next_task(pid)
    assert first["predictions"][0]["model_version"] == version_name(0)
    labels = {r["value"]["rectanglelabels"][0] for r in first["predictions"][0]["result"]}
    assert labels == {NEUTRAL_LABEL}

    result_regions, parent = _label_cells(first, 6)
    # The pathologist also draws a box around a nucleus the segmenter missed.
    drawn = dict(result_regions[0], id="drawn-by-hand", origin="manual", value=dict(result_regions[0]["value"]))
    drawn["value"].update(x=1.0, y=1.0, width=4.0, height=4.0, rectanglelabels=["Positive"])
    result_regions.append(drawn)
    annotator.submit(first["id"], result_regions, lead_time=12.5, parent_prediction=parent, project_id=pid)

    store = RedisLabelStore(Redis.from_url(redis_url))
    queue = Queue(settings.queue_name, connection=Redis.from_url(redis_url))
    assert store.pending(pid) == 6, "the webhook did not record the 6 new cell labels"
    assert queue.count == 1, "6 >= 5 new labels must enqueue exactly one retrain"

    _run_worker(redis_url, settings.queue_name)

    status = store.status(pid)
    assert status["version"] == 1 and status["n_labels"] == 6
    assert status["metrics"]["n_drawn_cells"] == 1, "the hand-drawn cell must be embedded and trained on"
    assert ls_client.projects.get(id=pid).model_version == version_name(1)
    served = annotator.next_task(pid)
    assert served["id"] == status["next_task_ids"][0], "Label Studio must serve the top-ranked task"
    shown = [p for p in served["predictions"] if p["model_version"] == version_name(1)]
    assert len(shown) == 1
    shown_labels = {r["value"]["rectanglelabels"][0] for r in shown[0]["result"]}
    assert shown_labels <= {"Positive", "Negative"} and shown_labels

    # A second pathologist working at the same time is served another task (Label Studio's task lock).
    colleague = new_annotator()
    assert colleague.next_task(pid)["id"] != served["id"]

    # A data scientist exports through the SDK and gets each label back in slide coordinates.
    exported = [t for t in ls_client.projects.exports.as_json(project_id=pid) if t["annotations"]]
    assert [t["id"] for t in exported] == [first["id"]]
    tile = TileTask.from_task_data(exported[0]["data"])
    boxes = {c.cell_id: (c.x0, c.y0, c.w, c.h) for c in tile.cells}
    labelled = {r["id"]: r for r in exported[0]["annotations"][0]["result"]
                if r["value"]["rectanglelabels"][0] != NEUTRAL_LABEL}
    assert len(labelled) == 7
    for cell_id, region in labelled.items():
        if cell_id != "drawn-by-hand":
            assert region_to_slide_box(region, tile) == pytest.approx(boxes[cell_id], abs=1)
    x0, y0, _, _ = region_to_slide_box(labelled["drawn-by-hand"], tile)
    # the tile PNG is rendered at 0.5 um/px, so one PNG pixel spans `downsample` level-0 pixels
    assert tile.downsample == 2.0
    assert (x0, y0) == pytest.approx((tile.x0 + 0.01 * tile.width * tile.downsample,
                                      tile.y0 + 0.01 * tile.height * tile.downsample), abs=1)
