"""Tiles, cell tables and tasks.json in S3 (moto's server on loopback) with a real Label Studio.

preprocess a slide with ``HALI_STORAGE_URL=s3://...`` -> tasks carry ``s3://`` image URIs, the project has an
S3 import storage, and Label Studio serves a task's PNG the way the labeling UI asks for it -> a retrain
reads the cell table from S3 -> a re-run skips the tiles that exist. Bad credentials, a missing bucket and
an unreachable endpoint give one line naming the setting to fix.
"""

from __future__ import annotations

import io
import time
from urllib.parse import urljoin

import pytest
import requests
from hali_backend import preprocess_settings
from PIL import Image

from adapters.label_studio import LabelStudioGateway
from label_config import TileTask, build_label_config
from ml_backend.cli import main
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess
from scripts import services

pytestmark = pytest.mark.integration
PREFIX = "runs/today"


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    for key, value in s3_server.aws_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _objects(client, bucket: str) -> dict[str, object]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["LastModified"] for page in pages for o in page.get("Contents", [])}


def _served_image(label_studio, task_id: int) -> tuple[str, requests.Response]:
    """The task's image as the labeling UI gets it: the task API resolves ``s3://`` into Label Studio's
    ``/tasks/<id>/resolve/?fileuri=...`` URL, which redirects to a presigned URL (or proxies the bytes)."""
    auth = {"Authorization": f"Token {label_studio.api_key}"}
    task = requests.get(f"{label_studio.url}/api/tasks/{task_id}/", headers=auth, timeout=30).json()
    resolved = task["data"]["image"]
    # requests drops the Authorization header when the redirect leaves for the S3 endpoint's host:port
    return resolved, requests.get(urljoin(label_studio.url, resolved), headers=auth, timeout=30)


def _label_first_task(ls_client, project_id: int, n: int) -> None:
    task = next(iter(ls_client.tasks.list(project=project_id, fields="all")))
    prediction = task.predictions[0]
    result = [dict(r) for r in (prediction["result"] if isinstance(prediction, dict) else prediction.result)]
    for i, region in enumerate(result[:n]):  # the rest stay "No class yet" (a left-out box is "Not a nucleus")
        region["value"] = dict(region["value"], rectanglelabels=["Positive" if i % 2 else "Negative"])
    ls_client.annotations.create(id=task.id, result=result, lead_time=3.0)


def test_preprocess_to_s3_serves_tiles_through_label_studio_and_retrains_from_s3(
        label_studio, ls_client, s3_server, s3_bucket, aws_env, ihc_slide, redis_url, redis_conn, tmp_path):
    storage_url = f"s3://{s3_bucket}/{PREFIX}"
    pre = preprocess_settings(data_dir=tmp_path / "local-data", ls_files_root=label_studio.files_root,
                              storage_url=storage_url, s3_endpoint_url=s3_server.endpoint_url,
                              classes="Positive,Negative", cells_per_task=20, mpp=0.25)
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    result = run_preprocess(ihc_slide, "HALI S3", pre, gateway)
    pid, slide = result.project_id, result.slide_id
    try:
        s3 = s3_server.client()
        stored = _objects(s3, s3_bucket)
        pngs = sorted(k for k in stored if k.startswith(f"{PREFIX}/hali/{slide}/") and k.endswith(".png"))
        assert {f"{PREFIX}/slides/{slide}/cells.npz", f"{PREFIX}/slides/{slide}/tasks.json"} <= set(stored)
        assert len(pngs) == result.n_tiles > 3
        local = tmp_path / "local-data" / "slides" / slide
        # Only the region parts, a working cache for resuming, stay in the local data dir; the outputs are in S3.
        assert not (local / "cells.npz").exists() and not (local / "tasks.json").exists()
        assert {p.name for p in local.iterdir()} <= {"parts"}

        tasks = list(ls_client.tasks.list(project=pid, fields="all", resolve_uri=False))
        images = sorted(t.data["image"] for t in tasks)
        assert images == [f"s3://{s3_bucket}/{k}" for k in pngs]
        storages = ls_client.import_storage.s3.list(project=pid)
        assert [(s.bucket, s.prefix or "") for s in storages] == [(s3_bucket, "")]

        # Label Studio serves the PNG itself: the same bytes as in the bucket, 0.5 um per pixel
        task = tasks[0]
        tile = TileTask.from_task_data(task.data)
        resolved, served = _served_image(label_studio, task.id)
        assert f"/tasks/{task.id}/resolve/?fileuri=" in resolved
        assert served.status_code == 200, served.text[:300]
        assert [r.status_code for r in served.history] == [303], "presign: Label Studio redirects to S3"
        assert served.url.startswith(s3_server.endpoint_url) and "Signature" in served.url
        key = tile.image.removeprefix(f"s3://{s3_bucket}/")
        assert served.content == s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert served.content.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(served.content)).size == (tile.width, tile.height)
        assert tile.downsample == 2.0 and tile.mpp * tile.downsample == pytest.approx(0.5)

        # the retrain reads every cell's features from the S3 cell table (the backend's data dir has none)
        _label_first_task(ls_client, pid, 6)
        backend = BackendSettings(data_dir=tmp_path / "backend-data", ls_files_root=label_studio.files_root,
                                  storage_url=storage_url, s3_endpoint_url=s3_server.endpoint_url,
                                  redis_url=redis_url, ls_url=label_studio.url, ls_api_key=label_studio.api_key)
        report = run_retrain(pid, backend, gateway, RedisLabelStore(redis_conn))
        assert (report.version, report.n_labels) == (1, 6)
        assert report.n_open_tasks == result.n_tiles - 1 and len(report.next_task_ids) > 0

        # a re-run imports nothing and rewrites no tile; a tile that went missing is written again
        s3.delete_object(Bucket=s3_bucket, Key=pngs[0])
        time.sleep(1.1)  # S3 LastModified has one-second resolution
        again = run_preprocess(ihc_slide, "HALI S3", pre, gateway)
        after = _objects(s3, s3_bucket)
        assert again.n_imported == 0 and pngs[0] in after
        assert all(after[k] == stored[k] for k in pngs[1:]), "tiles that existed must not be rewritten"
    finally:
        ls_client.projects.delete(id=pid)


def _cli(capsys, slide, *env_pairs, monkeypatch):
    for key, value in env_pairs:
        monkeypatch.setenv(key, value)
    code = main(["preprocess", str(slide), "--project", "p", "--mpp", "0.25", "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture
def cli_env(monkeypatch, tmp_path, s3_server, aws_env):
    monkeypatch.setenv("HALI_LS_URL", "http://127.0.0.1:1")  # never reached: storage is checked first
    monkeypatch.setenv("HALI_LS_API_KEY", "0" * 40)
    monkeypatch.setenv("HALI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HALI_S3_ENDPOINT_URL", s3_server.endpoint_url)
    return monkeypatch


def test_wrong_s3_secret_is_one_line_naming_the_aws_variables(cli_env, capsys, s3_server, s3_bucket, ihc_slide):
    with s3_server.checking_credentials():
        code, err = _cli(capsys, ihc_slide, ("HALI_STORAGE_URL", f"s3://{s3_bucket}/x"),
                         ("AWS_SECRET_ACCESS_KEY", "not-the-secret"), monkeypatch=cli_env)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "refused the credentials" in err and "AWS_SECRET_ACCESS_KEY" in err


def test_unknown_s3_key_id_is_refused_the_same_way(cli_env, capsys, s3_server, s3_bucket, ihc_slide):
    with s3_server.checking_credentials():
        code, err = _cli(capsys, ihc_slide, ("HALI_STORAGE_URL", f"s3://{s3_bucket}/x"),
                         ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00"), monkeypatch=cli_env)
    assert code == 2 and "refused the credentials" in err and "AWS_ACCESS_KEY_ID" in err


def test_missing_bucket_is_one_line_naming_hali_storage_url(cli_env, capsys, ihc_slide):
    code, err = _cli(capsys, ihc_slide, ("HALI_STORAGE_URL", "s3://no-such-bucket-hali/x"), monkeypatch=cli_env)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'no-such-bucket-hali' does not exist" in err and "HALI_STORAGE_URL" in err


def test_unreachable_endpoint_is_one_line_naming_hali_s3_endpoint_url(cli_env, capsys, s3_bucket, ihc_slide):
    dead = f"http://127.0.0.1:{services.free_port()}"
    code, err = _cli(capsys, ihc_slide, ("HALI_STORAGE_URL", f"s3://{s3_bucket}/x"), ("HALI_S3_ENDPOINT_URL", dead),
                     monkeypatch=cli_env)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "unreachable" in err and "HALI_S3_ENDPOINT_URL" in err


def test_backend_with_wrong_s3_keys_answers_predict_with_a_json_error(s3_server, s3_bucket, aws_env, redis_url,
                                                                      redis_conn, tmp_path, monkeypatch):
    from ml_backend.http.app import create_app

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    settings = BackendSettings(data_dir=tmp_path, ls_files_root=tmp_path, redis_url=redis_url,
                               storage_url=f"s3://{s3_bucket}/x", s3_endpoint_url=s3_server.endpoint_url)
    task = {"data": {"image": "s3://x/y.png", "slide_id": "s1", "tile_id": "t1", "x0": 0, "y0": 0, "width": 10,
                     "height": 10, "downsample": 1.0, "cells": [{"id": "c1", "x0": 1, "y0": 1, "w": 2, "h": 2}]}}
    body = {"project": 1, "tasks": [task], "label_config": build_label_config(["A", "B"])}
    with s3_server.checking_credentials():
        answer = create_app(settings).test_client().post("/predict", json=body)
    assert answer.status_code == 503
    assert "refused the credentials" in answer.get_json()["error"]


def test_label_studio_proxies_s3_images_with_the_keys_hali_gave_it(label_studio, ls_client, s3_server, s3_bucket,
                                                                  fresh_project):
    """presign=False: Label Studio reads the object itself, with the credentials in its S3 storage, while
    moto checks them; attaching the storage twice adds it once."""
    from label_config import build_label_config

    project = fresh_project(label_config=build_label_config(["A", "B"]))
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    key, png = f"{PREFIX}/hali/s/t.png", _png_bytes()
    s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=png)
    access = dict(endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                  access_key_id=s3_server.access_key_id, secret_access_key=s3_server.secret_access_key)
    with s3_server.checking_credentials():
        for _ in range(2):
            gateway.ensure_s3_storage(project.id, s3_bucket, PREFIX, presign=False, **access)
        (task_id,) = gateway.import_tasks(project.id, [{"data": {"image": f"s3://{s3_bucket}/{key}", "tile_id": "t"}}])
        resolved, served = _served_image(label_studio, task_id)
    assert len(ls_client.import_storage.s3.list(project=project.id)) == 1
    assert served.status_code == 200 and not served.history, "proxied by Label Studio, not redirected"
    assert served.content == png


def test_label_studio_refusing_the_s3_keys_is_a_clear_gateway_error(label_studio, s3_server, s3_bucket,
                                                                   fresh_project):
    from adapters.errors import LabelStudioError
    from label_config import build_label_config

    project = fresh_project(label_config=build_label_config(["A", "B"]))
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    with s3_server.checking_credentials(), pytest.raises(LabelStudioError) as refused:
        gateway.ensure_s3_storage(project.id, s3_bucket, endpoint_url=s3_server.endpoint_url,
                                  region=s3_server.region, access_key_id=s3_server.access_key_id,
                                  secret_access_key="not-the-secret")
    message = str(refused.value)
    assert f"could not add S3 storage s3://{s3_bucket}/ to project {project.id}" in message
    assert "AWS_SECRET_ACCESS_KEY" in message and s3_server.endpoint_url in message
    assert len(message) < 1000 and "\n" not in message, "one readable line, not a page of HTML"


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()
