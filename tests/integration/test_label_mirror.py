"""The label mirror against a real Label Studio and redis-server: the incremental reconcile reads only what
changed, the worker's scheduled reconcile catches labels no webhook announced, every annotator's label is kept
with its lineage, and the consensus trains the model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from hali_backend import preprocess_settings

from adapters.label_studio import LabelStudioGateway
from adapters.storage import LocalStorage
from label_config import NOT_NUCLEUS_LABEL, parse_label_set, version_name
from ml_backend.cli import main
from ml_backend.labels.agreement import agreement_report
from ml_backend.labels.lineage import cell_labels
from ml_backend.labels.mirror import read_labels
from ml_backend.labels.reconcile import reconcile_full, reconcile_incremental
from ml_backend.labels.records import consensus_labels
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.layout import read_task_maps
from preprocess.run import run_preprocess
from scripts import services

pytestmark = pytest.mark.integration
CLASSES = "Positive,Negative"


def _project(gateway, slide, title, **overrides):
    settings = preprocess_settings(classes=CLASSES, mpp=0.25, cells_per_task=8, **overrides)
    return run_preprocess(slide, title, settings, gateway)


def _labelled(task: dict, labels: list[str]) -> tuple[list[dict], int]:
    """The task's prediction regions with the first ``len(labels)`` cells given ``labels``; and its id."""
    prediction = task["predictions"][0]
    regions = [dict(r, value=dict(r["value"])) for r in prediction["result"]]
    for region, label in zip(regions, labels):
        region["value"]["rectanglelabels"] = [label]
    return regions, prediction["id"]


def test_incremental_reconcile_reads_only_tasks_updated_since_the_sync(hali_environ, label_studio, ls_client,
                                                                       redis_conn, ihc_slide, new_annotator):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = _project(gateway, ihc_slide, "HALI mirror incremental")
    pid = result.project_id
    maps = read_task_maps(LocalStorage(hali_environ), pid)
    assert sorted(maps[result.slide_id].values()) == sorted(t.id for t in ls_client.tasks.list(project=pid))
    store, labels = RedisLabelStore(redis_conn), parse_label_set(ls_client.projects.get(id=pid).label_config)
    margin = 2.0  # each read lists again the tasks saved in the last `margin` s (MARK_MARGIN_S, 30 s, by default)
    assert reconcile_incremental(pid, gateway, store, labels, margin_s=margin).kind == "full"  # no sync mark yet
    # a mark that trails the import (as MARK_MARGIN_S makes it after a big one): the 38 tasks updated since hold
    # no annotation and are newer than the mark, so none is listed (a full listing of 5,000 took 12 s)
    reconcile_full(pid, gateway, store, labels, margin_s=600.0)
    imported = reconcile_incremental(pid, gateway, store, labels, margin_s=margin)
    assert (imported.tasks_read, imported.written) == (0, 0)
    time.sleep(margin)  # the import leaves the window

    annotator = new_annotator()
    task = annotator.next_task(pid)
    regions, parent = _labelled(task, ["Positive", "Negative", "Positive"])
    ann = annotator.submit(task["id"], regions, lead_time=6.0, parent_prediction=parent, project_id=pid)

    report = reconcile_incremental(pid, gateway, store, labels, margin_s=margin)  # no webhook: the backend never heard of it
    assert (report.kind, report.written, report.changed) == ("incremental", 1, 3)
    rec = store.records(pid)[ann["id"]]
    assert (rec.task_id, rec.completed_by, rec.lead_time, rec.parent_prediction) == (task["id"], annotator.user_id,
                                                                                     6.0, parent)
    assert rec.model_version == version_name(0) and len(rec.suggested) == len(regions)
    assert {r.action for r in cell_labels(store.records(pid))} == {"labelled"}  # the first boxes suggest no class

    again = reconcile_incremental(pid, gateway, store, labels, margin_s=margin)
    assert (again.tasks_read, again.written, again.changed) == (1, 0, 0)  # of 38 tasks, the one updated
    ls_client.annotations.delete(id=ann["id"])
    gone = reconcile_incremental(pid, gateway, store, labels, margin_s=margin)
    assert (gone.removed, gone.changed) == (1, 3) and store.records(pid) == {}

    skipper = new_annotator()  # a skip is an annotation too: the "annotated" listing finds it
    other = skipper.next_task(pid)
    response = skipper.post(f"/api/tasks/{other['id']}/annotations?project={pid}",
                            json={"result": [], "was_cancelled": True, "lead_time": 1.0, "project": pid})
    assert response.status_code < 400, response.text
    skipped = reconcile_incremental(pid, gateway, store, labels, margin_s=margin)
    assert skipped.written == 1
    assert [(r.task_id, r.cancelled) for r in store.records(pid).values()] == [(other["id"], True)]


def test_three_readers_keep_their_labels_and_the_consensus_trains(hali_environ, label_studio, ls_client, redis_conn,
                                                                  ihc_slide, new_annotator, tmp_path, capsys):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pid = _project(gateway, ihc_slide, "HALI mirror overlap", overlap_share=1.0, overlap_readers=3).project_id
    store, settings = RedisLabelStore(redis_conn), BackendSettings(predictions_top_k=2)
    first, second, third = new_annotator(), new_annotator(), new_annotator()
    task = first.next_task(pid)
    regions, parent = _labelled(task, ["Positive", "Positive", "Negative"])
    first.submit(task["id"], regions, lead_time=3.0, parent_prediction=parent, project_id=pid)

    run_retrain(pid, settings, gateway, store)
    shown = ls_client.tasks.get(id=task["id"]).predictions
    assert any(_version(p) == version_name(1) for p in shown), "the second reader would open it with no boxes"

    for reader, labels in ((second, ["Positive", "Negative", "Negative"]), (third, ["Negative", "Negative"])):
        seen = reader.get(f"/api/tasks/{task['id']}").json()
        latest = next(p for p in seen["predictions"] if p["model_version"] == version_name(1))
        regions, _ = _labelled({"predictions": [latest]}, labels)
        reader.submit(task["id"], regions, lead_time=2.0, parent_prediction=latest["id"], project_id=pid)

    view = read_labels(pid, gateway, store, parse_label_set(ls_client.projects.get(id=pid).label_config),
                       LocalStorage(hali_environ))
    cells = [r["id"] for r in regions]
    assert len({r.completed_by for r in view.records.values()}) == 3
    assert view.labels[cells[0]] == "Positive"  # 2 of 3, though the latest save says Negative
    assert view.labels[cells[1]] == "Negative" and view.conflicts >= 2
    assert task["id"] not in view.open_ids  # three readers: done
    rows = [r for r in cell_labels(view.records) if r.annotator == second.user_id]
    assert {r.action for r in rows} <= {"kept", "changed", "rejected"} and all(r.model_version for r in rows)
    report = agreement_report(view.records, ["Positive", "Negative", NOT_NUCLEUS_LABEL])
    assert report["cells"] >= 3 and len(report["cohen_kappa_per_pair"]) == 3

    trained = run_retrain(pid, settings, gateway, store)
    assert trained.metrics["per_class"]["Positive"] == sum(v == "Positive" for v in view.labels.values())
    by_ds = consensus_labels(view.records, "dawid-skene")  # HALI_CONSENSUS=dawid-skene trains on its labels
    assert set(by_ds) == set(view.labels)
    trained = run_retrain(pid, BackendSettings(predictions_top_k=2, consensus="dawid-skene"), gateway, store)
    assert trained.metrics["per_class"]["Positive"] == sum(v == "Positive" for v in by_ds.values())

    assert main(["labels", "--project", str(pid), "--out", str(tmp_path / "lineage.csv")]) == 0
    printed = capsys.readouterr().out
    assert "by 3 annotators" in printed and "Cohen's kappa" in printed
    assert len((tmp_path / "lineage.csv").read_text().splitlines()) == 1 + len(cell_labels(store.records(pid)))


def test_labels_submitted_while_the_backend_is_down_reach_a_retrain_without_another_submit(
        hali_environ, label_studio, ls_client, redis_conn, ihc_slide, new_annotator, tmp_path):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pid = _project(gateway, ihc_slide, "HALI mirror outage").project_id  # no backend: no webhook ever arrives
    env = {**os.environ, "PYTHONPATH": str(services.REPO_ROOT), "HALI_RECONCILE_S": "2", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker", "--queues", "hali-test"],
                                  cwd=services.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        store = RedisLabelStore(redis_conn)
        _wait(lambda: store.sync_mark(pid) is not None, 60, "the worker's first full reconcile", tmp_path)
        annotator = new_annotator()
        task = annotator.next_task(pid)
        regions, parent = _labelled(task, ["Positive", "Negative", "Positive"])
        annotator.submit(task["id"], regions, lead_time=2.0, parent_prediction=parent, project_id=pid)
        start = time.monotonic()
        _wait(lambda: store.status(pid).get("model_version") == version_name(1), 60,
              "a retrain from the scheduled reconcile", tmp_path)
        print(f"label -> new version without a webhook: {time.monotonic() - start:.1f} s")
        assert store.status(pid)["n_labels"] == 3
        assert ls_client.projects.get(id=pid).model_version == version_name(1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def test_a_worker_started_after_an_outage_finds_its_labels_in_its_first_round_without_listing_every_task(
        hali_environ, label_studio, ls_client, redis_conn, ihc_slide, new_annotator, tmp_path):
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pid = _project(gateway, ihc_slide, "HALI mirror restart").project_id
    store = RedisLabelStore(redis_conn)
    labels = parse_label_set(ls_client.projects.get(id=pid).label_config)
    assert reconcile_full(pid, gateway, store, labels).kind == "full"  # the mirror as workers left it: a sync mark
    annotator = new_annotator()  # then everything HALI runs is down: no webhook, no worker
    task = annotator.next_task(pid)
    regions, parent = _labelled(task, ["Negative", "Positive"])
    annotator.submit(task["id"], regions, lead_time=2.0, parent_prediction=parent, project_id=pid)
    env = {**os.environ, "PYTHONPATH": str(services.REPO_ROOT), "HALI_RECONCILE_S": "60", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "worker.log", "wb") as log:  # a round every 60 s: only the first round can find it
        worker = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker", "--queues", "hali-test"],
                                  cwd=services.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait(lambda: store.status(pid).get("model_version") == version_name(1), 60,
              "a retrain from the restarted worker's first reconcile", tmp_path)
        assert store.status(pid)["n_labels"] == 2
        assert "incremental reconcile found 2 cell labels" in (tmp_path / "worker.log").read_text()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)


def _wait(condition, timeout_s: float, what: str, tmp_path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            log = (tmp_path / "worker.log").read_text()[-3000:]
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}; worker log:\n{log}")
        time.sleep(0.5)


def _version(prediction) -> str | None:
    return prediction.get("model_version") if isinstance(prediction, dict) else prediction.model_version


def test_status_warns_when_labels_wait_too_long_for_a_retrain(redis_url, redis_conn, tmp_path):
    from ml_backend.http.app import create_app

    settings = BackendSettings(redis_url=redis_url, data_dir=tmp_path / "data", stale_retrain_s=60)
    client = create_app(settings).test_client()
    store = RedisLabelStore(redis_conn)
    assert client.get("/status/5").get_json()["stale"] is None
    store.add_pending(5, 3)
    assert client.get("/status/5").get_json()["stale"] is None  # 3 labels, just now
    redis_conn.set("hali:p:5:pending-since", time.time() - 120)
    stale = client.get("/status/5").get_json()["stale"]
    assert "3 labels have waited 120 s" in stale and "HALI_STALE_RETRAIN_S" in stale
    store.start_retrain(5)
    assert client.get("/status/5").get_json()["stale"] is None
