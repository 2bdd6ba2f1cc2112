"""A retrain that cannot reach Label Studio loses nothing: the error names the server, and the pending
label count is put back so the next webhook enqueues a retry."""

from __future__ import annotations

import pytest
from label_studio_sdk import LabelStudio

from adapters.errors import LabelStudioError
from adapters.label_studio import LabelStudioGateway
from ml_backend.labels.records import AnnotationRecord
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings

pytestmark = pytest.mark.integration


def test_label_studio_down_during_retrain_keeps_the_pending_labels(redis_url, redis_conn, tmp_path):
    store = RedisLabelStore(redis_conn)
    assert store.record(4, 1, AnnotationRecord(9, {f"c{i}": "A" for i in range(6)})) == 6
    dead = "http://127.0.0.1:1"
    gateway = LabelStudioGateway(LabelStudio(base_url=dead, api_key="0" * 40, timeout=2), dead)
    settings = BackendSettings(data_dir=tmp_path, ls_files_root=tmp_path, redis_url=redis_url)
    with pytest.raises(LabelStudioError, match="unreachable"):
        run_retrain(4, settings, gateway, store)
    assert store.pending(4) == 6
    assert store.records(4)[1].labels["c0"] == "A", "the mirror must keep the labels it had"
    assert store.claim_retrain(4, ttl_s=60), "a failed retrain must not leave the queue blocked"
