"""The integration fixtures themselves, against the real redis-server and Label Studio."""

from __future__ import annotations

import secrets
import sys
import time

import pytest
import requests

from scripts import services

pytestmark = pytest.mark.integration


def test_redis_answers_and_each_test_starts_empty(redis_conn):
    assert redis_conn.ping()
    assert redis_conn.dbsize() == 0
    redis_conn.set("hali:test:key", "left behind")


def test_redis_flush_removes_what_the_previous_test_left(redis_conn):
    assert redis_conn.get("hali:test:key") is None
    assert redis_conn.dbsize() == 0


def test_free_port_is_not_in_use():
    assert not services.port_in_use(services.free_port())


def test_label_studio_reports_healthy(label_studio):
    response = requests.get(f"{label_studio.url}/health", timeout=10)
    assert response.status_code == 200
    assert label_studio.files_root.is_dir()


def test_label_studio_refuses_to_start_on_a_taken_port(label_studio, tmp_path):
    taken_port = int(label_studio.url.rsplit(":", 1)[1])
    try:
        services.start_label_studio(taken_port, tmp_path / "data", tmp_path / "files", "x@hali.test",
                                 "pw", "0" * 40, label_studio.ls_bin)
    except services.StackError as exc:
        assert f"port {taken_port} is taken" in str(exc)
    else:
        raise AssertionError("start_label_studio started on a port that was taken")


def test_fresh_project_with_rectangle_labels_has_no_tasks(ls_client, fresh_project):
    project = fresh_project()
    assert ls_client.projects.get(id=project.id).task_number == 0
    assert "RectangleLabels" in project.label_config


def test_annotator_submission_keeps_region_id_and_author(ls_client, fresh_project, new_annotator):
    project = fresh_project()
    annotator = new_annotator()
    ls_client.projects.import_tasks(id=project.id, request=[{"data": {"image": "/static/x.png"}}])

    task = annotator.next_task(project.id)
    region = {"id": "c1", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
              "original_width": 256, "original_height": 256, "image_rotation": 0,
              "value": {"x": 10.0, "y": 20.0, "width": 5.0, "height": 5.0, "rotation": 0,
                        "rectanglelabels": ["Positive"]}}
    created = annotator.submit(task["id"], [region], lead_time=3.5)

    exported = ls_client.projects.exports.as_json(project_id=project.id)
    (annotation,) = exported[0]["annotations"]
    assert annotation["id"] == created["id"]
    assert [r["id"] for r in annotation["result"]] == ["c1"]
    assert annotation["completed_by"] == annotator.user_id
    assert annotation["lead_time"] == pytest.approx(3.5)


def test_annotator_is_not_the_admin(ls_client, new_annotator):
    annotator = new_annotator()
    me = annotator.get("/api/current-user/whoami").json()
    admin = ls_client.users.whoami()
    assert me["id"] == annotator.user_id != admin.id


def test_a_password_that_starts_with_a_dash_is_set_and_logs_in(new_annotator):
    # secrets.token_urlsafe gives such passwords (1 in 64): reset_password took one for an option and failed
    annotator = new_annotator(password="-Kq1" + secrets.token_urlsafe(8))
    assert annotator.get("/api/current-user/whoami").json()["id"] == annotator.user_id


def test_wait_http_fails_fast_with_the_log_tail_of_a_dead_process(tmp_path):
    proc = services.spawn([sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"],
                       tmp_path / "dead.log", name="dead service")
    start = time.monotonic()
    with pytest.raises(services.StackError, match="boom: bad config") as info:
        services.wait_http(f"http://127.0.0.1:{services.free_port()}/health", 60, proc)
    assert time.monotonic() - start < 10
    assert "dead service" in str(info.value) and "code 3" in str(info.value)


def test_stop_pid_stops_the_whole_process_group(tmp_path):
    child_pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"open({str(child_pid_file)!r}, 'w').write(str(c.pid)); time.sleep(600)")
    proc = services.spawn([sys.executable, "-c", script], tmp_path / "parent.log")
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() or not child_pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child_pid = int(child_pid_file.read_text())

    services.stop_process(proc, timeout_s=5)

    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while services.pid_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not services.pid_alive(child_pid)


def test_demo_slide_is_a_pyramid_that_openslide_reads_back_exactly(tmp_path):
    import numpy as np
    import openslide
    from skimage import data

    from scripts import demo_slide

    path = tmp_path / "ihc.tiff"
    image = data.immunohistochemistry()
    demo_slide.write_pyramidal_tiff(demo_slide.pyramid(image), path)

    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_dimensions == ((512, 512), (256, 256), (128, 128))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(demo_slide.MPP)
        level0 = np.asarray(slide.read_region((0, 0), 0, (512, 512)).convert("RGB"))
    assert np.array_equal(level0, image)
