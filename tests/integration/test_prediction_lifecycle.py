"""The prediction lifecycle in a real Label Studio (ml_backend/retrain/publish.py): a version name is reserved
before any prediction is written and never reused, a failed or killed run leaves no predictions behind,
superseded versions are pruned, tasks outside the top K get theirs from /predict when opened, and the
labeling page opened by URL serves the same next task as "Label All Tasks"."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hali_backend import label_next_task, preprocess_settings, serve_backend

from adapters.errors import LabelStudioError
from adapters.label_studio import LabelStudioGateway
from label_config import version_name
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.model.store import ModelStore
from ml_backend.retrain.publish import RANKED_ORDERING
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration


class _PushFails(LabelStudioGateway):
    """A gateway whose prediction push stores the predictions, then fails with ``error`` (mid-push)."""

    error: BaseException = RuntimeError("Label Studio went away mid-push")

    def import_predictions(self, project_id: int, predictions) -> int:
        super().import_predictions(project_id, predictions)
        raise self.error


class _Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` runs, so nothing is cleaned up on the way out."""


def _project(label_studio, ihc_slide, new_annotator, backend_url: str | None = None) -> tuple[int, Any]:
    """A preprocessed project with one task's 6 cells labelled; returns (project id, the annotator)."""
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = run_preprocess(ihc_slide, f"HALI lifecycle {uuid.uuid4().hex[:8]}", preprocess_settings(
        classes="Positive,Negative", mpp=0.25, cells_per_task=8, backend_url=backend_url), gateway)
    assert result.n_tiles > 6
    annotator = new_annotator()
    label_next_task(annotator, result.project_id)
    return result.project_id, annotator


def _retrain(project_id: int, gateway: LabelStudioGateway, redis_conn, k: int = 3, prune_after_s: float = 0.0):
    settings = BackendSettings(predictions_top_k=k, prune_after_s=prune_after_s)
    return run_retrain(project_id, settings, gateway, RedisLabelStore(redis_conn))


def _gateway(label_studio, cls=LabelStudioGateway) -> LabelStudioGateway:
    return cls.connect(label_studio.url, label_studio.api_key)


def test_a_failed_push_leaves_no_predictions_and_its_version_is_never_reused(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, _ = _project(label_studio, ihc_slide, new_annotator)
    gateway = _gateway(label_studio)
    with pytest.raises(RuntimeError, match="mid-push"):
        _retrain(project_id, _gateway(label_studio, _PushFails), redis_conn)
    assert version_name(1) not in gateway.model_versions(project_id), "the failed run's predictions stayed"
    assert gateway.get_project(project_id).model_version == version_name(0)

    report = _retrain(project_id, gateway, redis_conn)
    assert report.version == 2, "the failed run's version name was used again"
    assert set(gateway.model_versions(project_id)) == {version_name(0), version_name(2)}
    assert gateway.get_project(project_id).model_version == version_name(2)


def test_a_run_killed_mid_push_is_pruned_by_the_next_and_its_name_never_reused(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, _ = _project(label_studio, ihc_slide, new_annotator)
    killed = type("_PushKilled", (_PushFails,), {"error": _Killed()})
    with pytest.raises(_Killed):
        _retrain(project_id, _gateway(label_studio, killed), redis_conn)
    gateway = _gateway(label_studio)
    assert gateway.model_versions(project_id).get(version_name(1)) == 3, "the killed run pushed its top 3"
    # A new worker with an empty model store (another machine's disk) still never reuses the name
    models_dir = DataLayout(hali_environ, hali_environ / "unused").models_dir(project_id)
    for marker in models_dir.glob("*.reserved"):
        marker.unlink()
    report = _retrain(project_id, gateway, redis_conn)
    assert report.version == 2
    assert set(gateway.model_versions(project_id)) == {version_name(0), version_name(2)}


def test_superseded_versions_are_pruned_to_about_one_prediction_per_task(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, _ = _project(label_studio, ihc_slide, new_annotator)
    gateway = _gateway(label_studio)
    n_tasks = gateway.get_project(project_id).task_number
    for expected in (1, 2, 3):
        report = _retrain(project_id, gateway, redis_conn, k=3)
        assert report.version == expected
        assert "prune" in report.metrics["seconds_by_phase"]
    counts = gateway.model_versions(project_id)
    assert counts == {version_name(0): n_tasks, version_name(3): 3}
    assert sum(counts.values()) <= n_tasks + 3
    assert ModelStore(DataLayout(hali_environ, hali_environ / "unused").models_dir(project_id)).latest_version() == 3


def test_a_superseded_version_stays_for_its_grace_so_a_task_opened_under_it_can_be_submitted(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, annotator = _project(label_studio, ihc_slide, new_annotator)
    gateway = _gateway(label_studio)
    _retrain(project_id, gateway, redis_conn, prune_after_s=600)
    task = annotator.next_task(project_id)  # opened under v1
    (shown,) = [p for p in task["predictions"] if p["model_version"] == version_name(1)]
    _retrain(project_id, gateway, redis_conn, prune_after_s=600)  # v2 goes live while the task is open
    assert version_name(1) in gateway.model_versions(project_id), "v1 was pruned within its grace"
    # what the labeling UI sends on Submit: Label Studio refuses it (400) once the parent prediction is gone
    annotator.submit(task["id"], shown["result"], lead_time=5.0, parent_prediction=shown["id"], project_id=project_id)
    _retrain(project_id, gateway, redis_conn, prune_after_s=0)
    assert set(gateway.model_versions(project_id)) == {version_name(0), version_name(3)}


@pytest.mark.parametrize("password", ["", "pw-4-ls"], ids=["open", "basic-auth"])
def test_a_task_outside_the_top_k_gets_its_prediction_from_predict_when_opened(
        hali_environ, label_studio, ls_client, redis_conn, ihc_slide, new_annotator, monkeypatch, password):
    monkeypatch.setenv("HALI_BACKEND_PASSWORD", password)  # renaming a locked backend must keep its credentials
    with serve_backend(BackendSettings()) as backend_url:
        project_id, annotator = _project(label_studio, ihc_slide, new_annotator, backend_url)
        gateway = _gateway(label_studio)
        report = _retrain(project_id, gateway, redis_conn, k=2)
        name = version_name(report.version)
        assert [b.title for b in gateway.ml_backends(project_id)] == [name]
        top = []
        for _ in range(2):  # the top K, in rank order, each holding its pushed prediction
            task = annotator.next_task(project_id)
            top.append(task["id"])
            assert [p["model_version"] for p in task["predictions"]] == [name]
            annotator.submit(task["id"], [], lead_time=1.0, project_id=project_id)
        assert top == report.next_task_ids[:2]

        outside = annotator.next_task(project_id)  # no prediction of `name` yet: Label Studio asks /predict
        assert outside["id"] not in report.next_task_ids[:2]
        predictions = outside["predictions"]
        assert [p["model_version"] for p in predictions] == [name]
        assert len(predictions[0]["result"]) == len(outside["data"]["cells"])
        labels = {r["value"]["rectanglelabels"][0] for r in predictions[0]["result"]}
        assert labels <= {"Positive", "Negative", "Not a nucleus"}, "the model's classes, not the neutral label"
        assert gateway.model_versions(project_id)[name] == 3, "Label Studio stored the /predict answer"
        (backend,) = ls_client.ml.list(project=project_id)
        assert backend.state != "ER" and backend.auth_method == ("BASIC_AUTH" if password else "NONE"), backend
    # The cost of live mode (docs/predictions.md): with the backend down, Label Studio shows no prediction at all
    assert annotator.next_task(project_id)["predictions"] == []


def test_the_labeling_page_opened_by_url_serves_the_same_next_task_as_label_all_tasks(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, button = _project(label_studio, ihc_slide, new_annotator)
    gateway = _gateway(label_studio)
    report = _retrain(project_id, gateway, redis_conn, k=4)
    reload = new_annotator()
    tab = _first_tab(reload, project_id)
    assert tab["data"]["ordering"] == RANKED_ORDERING
    for expected in report.next_task_ids[:3]:
        by_button = button.next_task(project_id)["id"]  # "Label All Tasks": GET /api/projects/<id>/next
        by_url = _next_by_url(reload, project_id, tab)  # what the labeling page sends after a reload
        assert by_button == by_url == expected
        button.submit(by_button, [], lead_time=1.0, project_id=project_id)


def _first_tab(annotator, project_id: int) -> dict:
    views = annotator.get(f"/api/dm/views?project={project_id}").json()
    return min(views, key=lambda v: (v.get("order") or 0, v["id"]))


def _next_by_url(annotator, project_id: int, tab: dict) -> int:
    """The next-task call of the labeling page opened by URL (/projects/<id>/data?labeling=1): the DM's
    ``next_task`` action with the tab's ordering and an empty selection and filter (libs/datamanager
    AppStore.invokeAction)."""
    body = {"ordering": tab["data"]["ordering"], "selectedItems": {"all": False, "included": []},
            "filters": {"conjunction": "and", "items": []}}
    response = annotator.post(f"/api/dm/actions?id=next_task&tabID={tab['id']}&project={project_id}", json=body)
    response.raise_for_status()
    return response.json()["id"]


class _Recording(LabelStudioGateway):
    """A real gateway that notes the prediction imports and the version switches, in order."""

    calls: list[tuple[str, Any]]

    def import_predictions(self, project_id: int, predictions) -> int:
        self.calls.append(("push", [p["task"] for p in predictions]))
        return super().import_predictions(project_id, predictions)

    def serve_version(self, project_id: int, model_version: str) -> None:
        self.calls.append(("switch", model_version))
        super().serve_version(project_id, model_version)


def _retrain_head_first(label_studio, ihc_slide, new_annotator, redis_conn, cls):
    """One retrain with K 5 and the first 2 pushed before the switch, through a ``cls`` gateway."""
    project_id, annotator = _project(label_studio, ihc_slide, new_annotator)
    gateway = _gateway(label_studio, cls)
    gateway.calls = []
    settings = BackendSettings(predictions_top_k=5, predictions_first_n=2, prune_after_s=0)
    return project_id, annotator, gateway, run_retrain(project_id, settings, gateway, RedisLabelStore(redis_conn))


def test_the_head_of_the_queue_goes_live_first_and_the_rest_of_the_top_k_follows(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, annotator, gateway, report = _retrain_head_first(label_studio, ihc_slide, new_annotator, redis_conn,
                                                                 _Recording)
    name, top = version_name(report.version), report.next_task_ids[:5]
    assert gateway.calls == [("push", top[:2]), ("switch", name), ("push", top[2:])]
    assert gateway.model_versions(project_id)[name] == 5, "the whole top K holds the version"
    assert {"push", "switch", "fill", "prune"} <= set(report.metrics["seconds_by_phase"])
    assert annotator.next_task(project_id)["id"] == top[0]


class _FillFails(_Recording):
    """Fails the second prediction import (the fill after the switch) as a Label Studio error."""

    def import_predictions(self, project_id: int, predictions) -> int:
        if any(c[0] == "switch" for c in self.calls):
            raise LabelStudioError("Label Studio went away during the fill")
        return super().import_predictions(project_id, predictions)


def test_a_failed_fill_leaves_the_new_version_live_with_its_head(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    project_id, annotator, gateway, report = _retrain_head_first(label_studio, ihc_slide, new_annotator, redis_conn,
                                                                 _FillFails)
    name = version_name(report.version)
    assert gateway.get_project(project_id).model_version == name
    assert gateway.model_versions(project_id)[name] == 2
    assert annotator.next_task(project_id)["id"] == report.next_task_ids[0]


def test_the_light_project_calls_read_and_write_what_the_full_ones_do(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    """The retrain reads and switches the project without Label Studio's counts (``include``); what it reads
    and writes must be what the full calls give."""
    project_id, _ = _project(label_studio, ihc_slide, new_annotator)
    gateway = _gateway(label_studio)
    full, light = gateway.get_project(project_id), gateway.project_settings(project_id)
    assert (light.id, light.title, light.label_config, light.model_version) == (
        project_id, full.title, full.label_config, full.model_version)
    gateway.import_predictions(project_id, [{"task": t, "model_version": "hali-v0042", "score": 0.0, "result": []}
                                            for t in [t["id"] for t in gateway.iter_tasks(project_id)][:2]])
    gateway.serve_version(project_id, "hali-v0042")
    gateway.set_description(project_id, "cohort A\nsecond line")
    full = gateway.get_project(project_id)
    assert (full.model_version, full.sampling, full.show_collab_predictions) == (
        "hali-v0042", "Uncertainty sampling", True)
    assert gateway.project_settings(project_id).description == full.description == "cohort A\nsecond line"
    with pytest.raises(LabelStudioError, match="read project 999999"):
        gateway.project_settings(999999)
