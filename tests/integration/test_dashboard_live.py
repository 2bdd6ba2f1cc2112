"""The project manager's view through real servers: a project labelled by two annotators through Label Studio,
two retrains, then the dashboard, its plots, /metrics (JSON and Prometheus) and the description line."""

from __future__ import annotations

import pytest
import requests
from hali_backend import preprocess_settings, serve_backend
from prometheus_client.parser import text_string_to_metric_families

from adapters.label_studio import LabelStudioGateway
from label_config import NEUTRAL_LABEL
from ml_backend.dashboard.snapshot import STATUS_MARK
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.model.store import ModelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration
AUTH = ("hali", "pw-dash")
USER_TEXT = "Ki-67 cohort 3: ask Ana before relabelling."


def _label(task: dict, version: str | None, flip_every: int) -> tuple[list[dict], int]:
    """The task's prediction of ``version`` (the newest when None) labelled as an annotator would: every box
    gets a class, every ``flip_every``-th suggestion is changed; returns (regions, prediction id)."""
    preds = [p for p in task["predictions"] if version is None or p["model_version"] == version]
    pred = max(preds, key=lambda p: p["id"])
    regions = [dict(r, value=dict(r["value"])) for r in pred["result"]]
    for i, region in enumerate(regions):
        shown = region["value"]["rectanglelabels"][0]
        if shown == NEUTRAL_LABEL or i % flip_every == 0:
            region["value"]["rectanglelabels"] = ["Positive" if shown != "Positive" else "Negative"]
            region["origin"] = "prediction-changed"
        else:
            region["origin"] = "prediction"
    return regions, pred["id"]


def test_dashboard_metrics_and_description_after_retrains(hali_environ, label_studio, ls_client, redis_conn,
                                                         ihc_slide, new_annotator, monkeypatch):
    monkeypatch.setenv("HALI_BACKEND_PASSWORD", AUTH[1])
    monkeypatch.setenv("HALI_GOLD_SHARE", "0.5")
    with serve_backend(BackendSettings()) as url:
        gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
        pre = preprocess_settings(classes="Positive,Negative", cells_per_task=8, mpp=0.25, backend_url=url)
        result = run_preprocess(ihc_slide, "HALI dashboard", pre, gateway)
        pid = result.project_id
        ls_client.projects.update(id=pid, description=USER_TEXT)
        ann, bob = new_annotator(), new_annotator()
        store = RedisLabelStore(redis_conn)

        task = ann.next_task(pid)
        regions, pred_id = _label(task, None, flip_every=1)
        ann.submit(task["id"], regions, lead_time=30.0, parent_prediction=pred_id, project_id=pid)
        run_retrain(pid, BackendSettings(), gateway, store)

        task = ann.next_task(pid)
        regions, pred_id = _label(task, "hali-v0001", flip_every=3)
        ann.submit(task["id"], regions, lead_time=20.0, parent_prediction=pred_id, project_id=pid)
        bob_regions, _ = _label(task, "hali-v0001", flip_every=4)  # an overlap: bob labels ann's task too
        bob.submit(task["id"], bob_regions, lead_time=25.0, parent_prediction=pred_id, project_id=pid)
        report = run_retrain(pid, BackendSettings(), gateway, store)

        assert requests.get(f"{url}/dashboard/{pid}", timeout=10).status_code == 401
        unauth = requests.get(f"{url}/metrics", timeout=10)
        assert unauth.status_code == 401 and unauth.headers["WWW-Authenticate"].startswith("Basic")
        page = requests.get(f"{url}/dashboard/{pid}", auth=AUTH, timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert ann.email in page.text and bob.email in page.text and "hali-v0002" in page.text
        for name in ("progress", "annotators", "acceptance", "learning", f"coverage/{result.slide_id}"):
            png = requests.get(f"{url}/dashboard/{pid}/{name}.png", auth=AUTH, timeout=60)
            assert png.status_code == 200 and png.content[:4] == b"\x89PNG", name
        assert requests.get(f"{url}/dashboard/{pid}/nope.png", auth=AUTH, timeout=10).status_code == 404
        assert requests.get(f"{url}/dashboard/{pid + 999}", auth=AUTH, timeout=10).status_code == 404

        body = requests.get(f"{url}/metrics/{pid}", auth=AUTH, timeout=10).json()
        summary, snapshot = body["summary"], body["snapshot"]
        assert summary["labels"] == report.n_labels and summary["model_version"] == "hali-v0002"
        assert set(snapshot["annotators"]) == {ann.email, bob.email}
        assert all(row["labels_per_hour"] > 0 for row in snapshot["annotators"].values())
        v1 = snapshot["acceptance"]["hali-v0001"]
        assert v1["annotations"] == 2 and v1["kept"] > 0 and v1["changed"] > 0
        assert "hali-v0000" not in snapshot["acceptance"]  # its boxes carried no class to keep
        assert snapshot["agreement"]["cells"] == len(regions) and snapshot["agreement"]["pairs"]
        assert snapshot["coverage"] == [result.slide_id]

        sidecar = ModelStore(DataLayout(hali_environ, label_studio.files_root).models_dir(pid)).load()[1]
        gold = sidecar["metrics"]["gold"]
        assert gold["n"] > 0 and sidecar["metrics"]["n_train"] + gold["n"] == sidecar["metrics"]["n_labels"]
        assert [p["model_version"] for p in snapshot["learning_curve"]] == ["hali-v0001", "hali-v0002"]

        for kwargs in ({"params": {"format": "prometheus"}}, {"headers": {"Accept": "text/plain"}}):
            text = requests.get(f"{url}/metrics", auth=AUTH, timeout=10, **kwargs)
            assert text.headers["Content-Type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(text.text)}
            (sample,) = [s for s in families["hali_labels"].samples if s.labels["project"] == str(pid)]
            assert sample.value == report.n_labels
        assert requests.get(f"{url}/metrics", auth=AUTH, params={"format": "xml"}, timeout=10).status_code == 400

        description = ls_client.projects.get(id=pid).description
        lines = description.splitlines()
        assert lines[0] == USER_TEXT and len(lines) == 2, description
        assert lines[1].startswith(STATUS_MARK) and f"{report.n_labels} labels" in lines[1]
        assert "hali-v0002" in lines[1] and f"{url}/dashboard/{pid}" in lines[1]
