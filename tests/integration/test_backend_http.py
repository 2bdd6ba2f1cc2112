"""The backend's HTTP contract and its bad-input answers, on the real Flask app and a real redis-server."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr
from redis import Redis
from rq import Queue

from label_config import NEUTRAL_LABEL, NOT_NUCLEUS_LABEL, CellBox, TileTask, build_label_config, cell_to_region
from ml_backend.http.app import create_app
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout
from preprocess.tiles.cells import CellTable

pytestmark = pytest.mark.integration
CLASSES = ["Tumor", "Other"]
CONFIG = build_label_config(CLASSES)


@pytest.fixture
def settings(redis_url, redis_conn, tmp_path):
    return BackendSettings(data_dir=tmp_path / "data", ls_files_root=tmp_path / "files", redis_url=redis_url,
                           queue_name="hali-http", ls_url="http://127.0.0.1:9", ls_api_key="x")


@pytest.fixture
def tile(settings) -> TileTask:
    """A preprocessed tile of 8 cells, its cell table written where the backend looks."""
    cells = tuple(CellBox(f"s1-{i}", 100 + 20 * i, 100, 10, 10) for i in range(8))
    rng = np.random.default_rng(0)
    CellTable(np.array([c.cell_id for c in cells]), np.array([[c.x0, c.y0, c.w, c.h] for c in cells], np.int32),
              np.array(["t1"] * 8), rng.normal(size=(8, 16)).astype(np.float32)
              ).save(DataLayout(settings.data_dir, settings.ls_files_root).cells_path("s1"))
    return TileTask("t1", "s1", "/img.png", 90, 90, 180, 30, 1.0, 0.5, cells)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


def _webhook(tile: TileTask, labels: list[str], annotation_id: int = 1) -> dict:
    """An annotation giving the first cells ``labels``; the other boxes are left "No class yet"."""
    labels = labels + [NEUTRAL_LABEL] * (len(tile.cells) - len(labels))
    result = [cell_to_region(c, tile, lab) for c, lab in zip(tile.cells, labels)]
    return {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": CONFIG},
            "annotation": {"id": annotation_id, "result": result, "task": 3, "updated_at": "2026-11-22T10:00:00Z"},
            "task": {"id": 3, "data": tile.to_task_data()}}


def test_health_setup_and_versions_answer_json(client):
    assert client.get("/health").get_json()["status"] == "UP"
    assert client.post("/setup", json={"project": "7.1700000000", "schema": CONFIG}).get_json() == \
        {"model_version": "hali-v0000"}
    assert client.get("/versions", json={"project": "7.1"}).get_json() == {"versions": ["hali-v0000"]}


def test_five_new_labels_enqueue_one_retrain_and_fewer_do_not(client, tile, settings, redis_url):
    queue = Queue(settings.queue_name, connection=Redis.from_url(redis_url))
    r = client.post("/webhook", json=_webhook(tile, ["Tumor"] * 4))
    assert r.status_code == 200 and r.get_json()["pending"] == 4 and queue.count == 0
    # The same annotation updated with the same labels plus one more: one new label, not five.
    r = client.post("/webhook", json=_webhook(tile, ["Tumor"] * 4 + ["Other"]))
    assert r.get_json()["pending"] == 5 and r.get_json()["job"] is not None
    client.post("/webhook", json=_webhook(tile, ["Other"] * 8, annotation_id=2))
    assert queue.count == 1, "a second retrain must not be queued while one waits"


def test_not_a_nucleus_and_deleted_boxes_count_as_new_labels_and_a_skip_counts_none(client, tile):
    body = _webhook(tile, ["Tumor", NOT_NUCLEUS_LABEL])
    del body["annotation"]["result"][2:4]  # two boxes deleted
    body["annotation"]["parent_prediction"] = 41
    r = client.post("/webhook", json=body)
    assert r.status_code == 200 and r.get_json()["recorded"] == 4 and r.get_json()["pending"] == 4
    skipped = _webhook(tile, [], annotation_id=2)
    skipped["annotation"].update(result=[], was_cancelled=True, parent_prediction=42)
    assert client.post("/webhook", json=skipped).get_json()["pending"] == 4


@pytest.mark.parametrize("body", ["{not json", "[]", '{"action": "ANNOTATION_CREATED"}'])
def test_malformed_webhook_is_a_400_with_a_message(client, body):
    r = client.post("/webhook", data=body, content_type="application/json")
    assert r.status_code == 400 and "error" in r.get_json()


def test_label_outside_the_config_is_a_422_and_the_good_labels_are_kept(client, tile):
    r = client.post("/webhook", json=_webhook(tile, ["Tumor", "Tumour", "Other"]))
    body = r.get_json()
    assert r.status_code == 422 and "Tumour" in body["error"] and body["recorded"] == 2


def test_unknown_region_id_is_kept_as_a_drawn_cell(client, tile):
    body = _webhook(tile, ["Tumor"])
    extra = cell_to_region(CellBox("hand-drawn-1", 150, 100, 8, 8), tile, "Other")
    body["annotation"]["result"].append(extra)
    r = client.post("/webhook", json=body)
    assert r.status_code == 200 and r.get_json()["drawn"] == 1 and r.get_json()["recorded"] == 1


def test_task_data_that_is_not_ours_is_a_422(client, tile):
    body = _webhook(tile, ["Tumor"])
    body["task"]["data"] = {"image": "x"}
    r = client.post("/webhook", json=body)
    assert r.status_code == 422 and "slide_id" in r.get_json()["error"]


def test_predict_answers_one_result_per_task_in_order_and_names_unknown_slides(client, tile):
    tasks = [{"id": 1, "data": tile.to_task_data()}]
    r = client.post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": CONFIG})
    results = r.get_json()["results"]
    assert r.status_code == 200 and len(results) == 1
    assert [reg["id"] for reg in results[0]["result"]] == [c.cell_id for c in tile.cells]
    other = TileTask("t9", "unknown-slide", "/x.png", 0, 0, 10, 10, 1.0, None, tile.cells[:1])
    r = client.post("/predict", json={"tasks": [{"data": other.to_task_data()}], "project": 7, "label_config": CONFIG})
    assert r.status_code == 409 and "hali preprocess" in r.get_json()["error"]


def test_redis_down_is_a_503_that_says_no_label_is_lost(tile, tmp_path):
    down = BackendSettings(data_dir=tmp_path, ls_files_root=tmp_path, redis_url="redis://127.0.0.1:1/0")
    r = create_app(down).test_client().post("/webhook", json=_webhook(tile, ["Tumor"]))
    assert r.status_code == 503 and "No label is lost" in r.get_json()["error"]


def test_webhook_secret_is_required_when_set(settings, tile):
    app = create_app(settings.model_copy(update={"webhook_secret": SecretStr("s3cret")})).test_client()
    assert app.post("/webhook", json=_webhook(tile, ["Tumor"])).status_code == 401
    ok = app.post("/webhook", json=_webhook(tile, ["Tumor"]), headers={"X-Hali-Secret": "s3cret"})
    assert ok.status_code == 200


def test_a_slide_id_that_climbs_out_of_the_data_dir_is_a_422(client, tile):
    bad = TileTask("t1", "../../etc", "/x.png", 0, 0, 10, 10, 1.0, None, tile.cells[:1])
    r = client.post("/predict", json={"tasks": [{"data": bad.to_task_data()}], "project": 7, "label_config": CONFIG})
    assert r.status_code == 422 and "storage key" in r.get_json()["error"]


def test_a_corrupt_model_file_is_a_503_that_names_it(client, tile, settings):
    models = DataLayout(settings.data_dir, settings.ls_files_root).models_dir(7)
    models.mkdir(parents=True)
    (models / "latest.json").write_text('{"version": 1}')
    (models / "v0001.json").write_text('{"version": 1}')
    (models / "v0001.pt").write_bytes(b"not a torch file")
    r = client.post("/predict", json={"tasks": [{"data": tile.to_task_data()}], "project": 7, "label_config": CONFIG})
    assert r.status_code == 503 and "v0001" in r.get_json()["error"]


def _random_body(rng, depth=0):
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([None, 1, -5, 1.5, "", "x", "7.1", "../..", True, [], {}, "9" * 30, 2**70])
    if r < 0.6:
        return [_random_body(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["project", "tasks", "action", "annotation", "task", "data", "id", "result", "label_config",
            "annotations", "schema", "cells", "slide_id", "tile_id", "x0", "value"]
    body = {rng.choice(keys): _random_body(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if rng.random() < 0.3:
        body["action"] = rng.choice(["ANNOTATION_CREATED", "ANNOTATIONS_DELETED", "START_TRAINING"])
    return body


def test_malformed_requests_get_a_4xx_json_error_never_a_5xx(client):
    import random

    rng = random.Random(0)
    routes = [("post", "/setup"), ("post", "/predict"), ("post", "/webhook"), ("get", "/versions"),
              ("post", "/versions")]
    raw_bodies = [b"[" * 5000 + b"]" * 5000, b"not json", b"\xff\xfe", b"{", b""]
    for i in range(600):
        method, path = rng.choice(routes)
        if i % 10 == 0:
            r = getattr(client, method)(path, data=rng.choice(raw_bodies), content_type="application/json")
        else:
            r = getattr(client, method)(path, json=_random_body(rng))
        assert r.status_code < 500, (path, r.get_json())
        if r.status_code >= 400:
            assert isinstance(r.get_json()["error"], str)


@pytest.mark.parametrize("annotations", [[{"id": "x"}], [{"id": None}], [{"id": -1}], [5], 5])
def test_a_delete_event_with_bad_ids_is_a_400(client, annotations):
    r = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": annotations})
    assert r.status_code == 400 and "annotations" in r.get_json()["error"]


def test_a_body_over_the_limit_is_a_413_and_a_redis_password_is_never_shown(settings, tile, tmp_path):
    small = create_app(settings.model_copy(update={"max_body_mb": 0.001})).test_client()
    r = small.post("/webhook", json=_webhook(tile, ["Tumor"] * 8), headers={"X-Pad": "x"})
    assert r.status_code == 413 and "error" in r.get_json()
    down = BackendSettings(data_dir=tmp_path, ls_files_root=tmp_path, redis_url="redis://:hunter2@127.0.0.1:1/0")
    r = create_app(down).test_client().post("/webhook", json=_webhook(tile, ["Tumor"]))
    assert r.status_code == 503 and "hunter2" not in r.get_data(as_text=True) and ":***@127.0.0.1:1" in r.get_json()["error"]
