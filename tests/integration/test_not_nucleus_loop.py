""""Not a nucleus" through a real Label Studio, a real redis-server and a real rq worker.

A non-admin annotator marks one box "Not a nucleus" (hotkey 0), deletes another, gives four a class and
leaves the rest "No class yet", then submits as the UI does. The webhook counts six new labels and
enqueues a retrain; the worker trains on them; the status counts the two non-nuclei; the model's next
predictions (pushed by the retrain, and answered by /predict) suggest "Not a nucleus"; an export read
through ``nuclei_only`` gives back the four nuclei. (That tiles of predicted non-nuclei only are served
last is tested in tests/unit/test_not_nucleus.py: after one retrain this slide has no such tile.)
"""

from __future__ import annotations

import pytest
import requests
from hali_backend import preprocess_settings, serve_backend
from redis import Redis
from rq import Queue, SimpleWorker

from adapters.label_studio import LabelStudioGateway
from label_config import (
    NEUTRAL_LABEL,
    NOT_NUCLEUS_LABEL,
    TileTask,
    is_nucleus,
    nuclei_only,
    parse_label_set,
    read_cell_labels,
    region_to_slide_box,
    version_name,
)
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


@pytest.fixture
def hali(hali_environ, label_studio, redis_url, redis_conn, tmp_path, monkeypatch):
    settings = BackendSettings()
    with serve_backend(settings) as url:
        yield settings, url


def _annotate(prediction: dict) -> tuple[list[dict], str]:
    """Cells 0-1 Positive, 2-3 Negative, 4 "Not a nucleus", 5 deleted, the rest left as shown."""
    result = [dict(r, value=dict(r["value"])) for r in prediction["result"]]
    for i, label in enumerate(["Positive", "Positive", "Negative", "Negative", NOT_NUCLEUS_LABEL]):
        result[i]["value"]["rectanglelabels"] = [label]
        result[i]["origin"] = "prediction-changed"
    deleted = result.pop(5)
    return result, deleted["id"]


def test_not_a_nucleus_by_hotkey_or_deletion_is_learnt_suggested_and_counted(
    hali, label_studio, ls_client, redis_url, ihc_slide, new_annotator
):
    settings, backend_url = hali
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pre = preprocess_settings(classes="Positive,Negative", cells_per_task=10, mpp=0.25, backend_url=backend_url)
    pid = run_preprocess(ihc_slide, "HALI not a nucleus", pre, gateway).project_id
    config = ls_client.projects.get(id=pid).label_config
    assert parse_label_set(config).targets == ("Positive", "Negative", NOT_NUCLEUS_LABEL)

    annotator = new_annotator()
    first = annotator.next_task(pid)
    prediction = first["predictions"][0]
    assert {r["value"]["rectanglelabels"][0] for r in prediction["result"]} == {NEUTRAL_LABEL}
    result, deleted_id = _annotate(prediction)
    annotator.submit(first["id"], result, lead_time=9.0, parent_prediction=prediction["id"], project_id=pid)

    store = RedisLabelStore(Redis.from_url(redis_url))
    redis = Redis.from_url(redis_url)
    assert store.pending(pid) == 6, "4 classes + 1 'Not a nucleus' + 1 deleted box are 6 new labels"
    assert Queue(settings.queue_name, connection=redis).count == 1
    SimpleWorker([Queue(settings.queue_name, connection=redis)], connection=redis).work(burst=True)

    status = requests.get(f"{backend_url}/status/{pid}", timeout=10).json()["last_retrain"]
    assert status["version"] == 1 and status["n_labels"] == 6
    assert status["metrics"]["per_class"] == {"Positive": 2, "Negative": 2, NOT_NUCLEUS_LABEL: 2}
    assert status["metrics"]["n_nuclei"] == 4

    # The retrain's predictions for the open tasks suggest "Not a nucleus", each box scored by its probability.
    v1 = version_name(1)
    tasks = ls_client.projects.exports.as_json(project_id=pid)
    shown = {p.task: p.model_dump(mode="json") for p in ls_client.predictions.list(project=pid)
             if p.model_version == v1}
    assert sorted(shown) == sorted(t["id"] for t in tasks if not t["annotations"])
    suggested = [r for p in shown.values() for r in p["result"]]
    not_nuclei = [r for r in suggested if r["value"]["rectanglelabels"] == [NOT_NUCLEUS_LABEL]]
    assert not_nuclei, "the model never suggests 'Not a nucleus'"
    assert all(1 / 3 <= r["score"] <= 1 for r in not_nuclei)
    assert len(not_nuclei) < len(suggested), "the model suggests classes too"

    assert annotator.next_task(pid)["id"] == status["next_task_ids"][0]

    # /predict, which Label Studio calls for a task without a prediction, suggests it too.
    task_with = next(t for t in tasks if t["id"] in shown and any(
        r["value"]["rectanglelabels"] == [NOT_NUCLEUS_LABEL] for r in shown[t["id"]]["result"]))
    answer = requests.post(f"{backend_url}/predict", timeout=30, json={
        "tasks": [{"id": task_with["id"], "data": task_with["data"]}], "project": f"{pid}.1", "label_config": config,
    }).json()
    assert NOT_NUCLEUS_LABEL in {r["value"]["rectanglelabels"][0] for r in answer["results"][0]["result"]}

    # An export, read as README's "Exporting labels" does, keeps the four nuclei and leaves the two non-nuclei out.
    (done,) = [t for t in tasks if t["annotations"]]
    (annotation,) = done["annotations"]
    tile = TileTask.from_task_data(done["data"])
    read = read_cell_labels(annotation["result"], tile, parse_label_set(config),
                            annotation.get("parent_prediction") is not None)
    assert read.labels[deleted_id] == NOT_NUCLEUS_LABEL
    nuclei = nuclei_only(read.labels) | {rid: lab for _, lab, rid in read.drawn if is_nucleus(lab)}
    exported = {r["id"]: region_to_slide_box(r, tile) for r in annotation["result"] if r["id"] in nuclei}
    assert sorted(nuclei.values()) == ["Negative", "Negative", "Positive", "Positive"] and len(exported) == 4
    boxes = {c.cell_id: (c.x0, c.y0, c.w, c.h) for c in tile.cells}
    assert all(exported[c] == pytest.approx(boxes[c], abs=1) for c in exported)
