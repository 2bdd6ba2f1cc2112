"""The webhook's Redis work against a real redis-server: the label count a Lua script keeps, and how few round
trips a label costs (each one is a wake-up of redis-server that a busy machine makes wait: docs/serving.md)."""

from __future__ import annotations

import pytest
from redis import Connection, Redis
from rq import Queue

from label_config import CellBox, TileTask, build_label_config, cell_to_region
from ml_backend.http.app import create_app
from ml_backend.labels.records import AnnotationRecord
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.job import enqueue_retrain
from ml_backend.settings import BackendSettings

pytestmark = pytest.mark.integration
CONFIG = build_label_config(["Tumor", "Other"])


class _CountingConnection(Connection):
    """A real connection that counts the commands (round trips) it sends."""

    sent = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sent += 1
        return super().send_packed_command(command, check_health)


def test_recording_counts_new_and_changed_labels_once(redis_conn):
    store = RedisLabelStore(redis_conn)
    labels = {f"c{i}": "Tumor" for i in range(6)}
    assert store.record(3, 1, AnnotationRecord(9, labels)) == 6
    assert store.pending_since(3) is not None and 3 in store.projects()
    assert store.record(3, 1, AnnotationRecord(9, labels)) == 6, "an Update that changes nothing counts nothing"
    changed = {**labels, "c0": "Other", "c1": "Other", "c6": "Tumor"}
    assert store.record(3, 1, AnnotationRecord(9, changed)) == 9
    assert store.record(3, 2, AnnotationRecord(10, {"c0": "Other"})) == 10, "a second reader's label counts"
    assert store.records(3)[1].labels == changed


def test_a_webhook_past_the_threshold_costs_two_round_trips_and_queues_one_retrain(redis_url, tmp_path):
    settings = BackendSettings(data_dir=tmp_path / "data", ls_files_root=tmp_path / "files", redis_url=redis_url,
                               queue_name="hali-trips", ls_url="http://127.0.0.1:9", ls_api_key="x")
    redis = Redis.from_url(redis_url, connection_class=_CountingConnection)
    client = create_app(settings, redis).test_client()
    cells = tuple(CellBox(f"s1-{i}", 100 + 20 * i, 100, 10, 10) for i in range(8))
    tile = TileTask("t1", "s1", "/img.png", 90, 90, 180, 30, 1.0, 0.5, cells)
    result = [cell_to_region(c, tile, "Tumor") for c in cells]

    def post(annotation_id: int):
        body = {"action": "ANNOTATION_CREATED", "project": {"id": 8, "label_config": CONFIG},
                "annotation": {"id": annotation_id, "result": result, "task": annotation_id},
                "task": {"id": annotation_id, "data": tile.to_task_data()}}
        return client.post("/webhook", json=body).get_json()

    assert post(1)["job"] is not None  # 8 labels: the first retrain is queued (and the scripts are loaded)
    before = _CountingConnection.sent
    again = post(2)
    assert again["job"] is None and again["pending"] == 16, "a retrain already waits: no second one"
    assert _CountingConnection.sent - before == 2, "record, then claim-or-peek: one round trip each"
    assert Queue("hali-trips", connection=Redis.from_url(redis_url)).count == 1


def test_a_flag_whose_job_failed_is_replaced(redis_url, redis_conn):
    store, queue = RedisLabelStore(redis_conn), Queue("hali-peek", connection=redis_conn)
    settings = BackendSettings(queue_name="hali-peek", redis_url=redis_url)
    first = enqueue_retrain(queue, store, 9, settings)
    assert store.claim_or_peek(9, settings.job_timeout_s, "other", "rq:job:")[:2] == (first, "queued")
    queue.fetch_job(first).set_status("failed")
    second = enqueue_retrain(queue, store, 9, settings)
    assert second not in (None, first) and store.queued_job(9) == second


def test_a_flag_claimed_a_moment_ago_whose_job_is_not_enqueued_yet_is_left_to_its_claimer(redis_url, redis_conn):
    store, queue = RedisLabelStore(redis_conn), Queue("hali-race", connection=redis_conn)
    settings = BackendSettings(queue_name="hali-race", redis_url=redis_url)
    assert store.claim_retrain(6, ttl_s=settings.job_timeout_s, job_id="hali-retrain-6-mine")  # enqueue comes next
    assert enqueue_retrain(queue, store, 6, settings) is None, "a second webhook must not queue a second retrain"
    assert queue.count == 0 and store.queued_job(6) == "hali-retrain-6-mine"
