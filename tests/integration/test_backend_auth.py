"""A backend with a password and a webhook secret, as `make up` runs it: Label Studio is given both by
`hali preprocess --backend-url`, its calls and webhooks get through, and nobody else's do."""

from __future__ import annotations

import pytest
import requests
from hali_backend import preprocess_settings, serve_backend
from redis import Redis

from adapters.label_studio import LabelStudioGateway
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


def test_label_studio_reaches_a_locked_backend_and_strangers_do_not(hali_environ, label_studio, ls_client, redis_url,
                                                                    ihc_slide, new_annotator, monkeypatch):
    monkeypatch.setenv("HALI_BACKEND_PASSWORD", "pw-4-ls")
    monkeypatch.setenv("HALI_WEBHOOK_SECRET", "hook-secret")
    with serve_backend(BackendSettings()) as url:
        assert requests.get(f"{url}/health", timeout=5).status_code == 200  # liveness stays open
        stranger = requests.post(f"{url}/predict", json={"project": 1, "tasks": []}, timeout=5)
        assert stranger.status_code == 401 and "basic auth" in stranger.json()["error"]
        assert requests.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 1}},
                             auth=("hali", "wrong"), timeout=5).status_code == 401

        gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
        pre = preprocess_settings(classes="Positive,Negative", cells_per_task=10, mpp=0.25, backend_url=url)
        pid = run_preprocess(ihc_slide, "HALI locked", pre, gateway).project_id
        (backend,) = ls_client.ml.list(project=pid)
        assert backend.auth_method == "BASIC_AUTH" and backend.state != "ER", backend

        annotator = new_annotator()
        task = annotator.next_task(pid)
        regions = [dict(r, value=dict(r["value"])) for r in task["predictions"][0]["result"]]
        for region in regions[:3]:  # three boxes get a class; the rest stay "No class yet"
            region["value"]["rectanglelabels"] = ["Positive"]
            region["origin"] = "prediction-changed"
        annotator.submit(task["id"], regions, lead_time=5.0, project_id=pid)
        assert RedisLabelStore(Redis.from_url(redis_url)).pending(pid) == 3, "the webhook did not get through"
