"""`hali preprocess --queue` on two real `hali worker` processes, one killed midway: a re-run enqueues only
what was lost, and the project ends up with each tile once and the cell table of a single-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hali_backend import hali_env, preprocess_settings
from rq import Queue, SimpleWorker, Worker

from adapters.label_studio import LabelStudioGateway
from ml_backend.cli import main
from preprocess.layout import DataLayout
from preprocess.queue.progress import PREFIX, PreprocessProgress
from preprocess.run import run_preprocess
from preprocess.tiles.cells import CellTable
from scripts import services
from scripts.demo_slide import pyramid, write_pyramidal_tiff

pytestmark = pytest.mark.integration
QUEUE = "hali-preprocess"
PROJECT = "HALI queued slide"
CLASSES = "Positive,Negative"
# Small windows and one window per region: 12 regions of about a second each on a 1024 x 768 slide.
SLIDE_ENV = {"HALI_WINDOW_PX": "256", "HALI_REGION_WINDOWS": "1", "HALI_MPP": "0.25", "HALI_CLASSES": CLASSES,
             "HALI_CELLS_PER_TASK": "20", "HALI_PREPROCESS_QUEUE_NAME": QUEUE, "HALI_PREPROCESS_LEASE_S": "2"}


@pytest.fixture
def slide(tmp_path):
    """A 1024 x 768 pyramidal TIFF: scikit-image's IHC image mirrored 2 x 1.5 times (0.25 um/px)."""
    from skimage import data

    ihc = data.immunohistochemistry()
    row = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    path = tmp_path / "mirrored-ihc.tiff"
    write_pyramidal_tiff(pyramid(np.concatenate([row, row[::-1][:256]], axis=0)), path)
    return path


@pytest.fixture
def env(label_studio, redis_url, redis_conn, tmp_path, monkeypatch):
    values = {**hali_env(label_studio, redis_url, tmp_path / "data"), **SLIDE_ENV}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values, "PYTHONPATH": str(services.REPO_ROOT)}


def _start_worker(env: dict[str, str], log_path) -> subprocess.Popen:
    """`hali worker --burst` on the preprocessing queue, in its own process group (so its work horse dies too)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "worker", "--burst", "--queues", QUEUE],
                                cwd=services.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (an rq worker's work horse, in a process group of its own)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            children.append(int(stat.parent.name))
    return children


def _kill_midway(proc: subprocess.Popen, redis, data_dir: Path) -> bool:
    """SIGKILL a worker and its work horse, as a machine dying would, while the horse's region has no part yet.

    Worker and horse are stopped first, so neither forks nor finishes meanwhile; when the horse is not midway
    through a region they are resumed and False is returned (try again).
    """
    os.kill(proc.pid, signal.SIGSTOP)
    horses = _children(proc.pid)
    for pid in horses:
        os.kill(pid, signal.SIGSTOP)
    job_id = next((w.get_current_job_id() for w in Worker.all(connection=redis) if w.pid == proc.pid), None)
    if not horses or not job_id or job_id.endswith("-merge") or _part_written(job_id, data_dir):
        for pid in [*horses, proc.pid]:
            os.kill(pid, signal.SIGCONT)
        return False
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    return True


def _part_written(job_id: str, data_dir: Path) -> bool:
    """Whether the region of job ``hali-pp-<slide id>-<recipe key>-<region id>`` has its part on disk."""
    slide_id, key, region_id = job_id.removeprefix("hali-pp-").split("-", 2)
    return (data_dir / "slides" / slide_id / "parts" / key / f"{region_id}.npz").exists()


def test_killed_worker_loses_one_region_and_a_rerun_completes_the_slide(env, slide, redis_conn, label_studio,
                                                                        ls_client, tmp_path, capsys):
    assert main(["preprocess", str(slide), "--project", PROJECT, "--queue"]) == 0
    assert "12 regions, 0 done, 12 enqueued" in capsys.readouterr().out
    assert main(["preprocess", str(slide), "--project", PROJECT, "--queue"]) == 0
    assert "12 regions, 0 done, 0 enqueued" in capsys.readouterr().out
    assert Queue(QUEUE, connection=redis_conn).count == 12

    progress, data_dir = PreprocessProgress(redis_conn), tmp_path / "data"
    doomed, survivor = (_start_worker(env, tmp_path / f"worker-{i}.log") for i in range(2))
    try:
        def killed_midway() -> bool:
            return progress.statuses()[0].regions_done >= 3 and _kill_midway(doomed, redis_conn, data_dir)

        _wait(killed_midway, 120, "the first worker to be midway through a region")
        assert survivor.wait(timeout=120) == 0, (tmp_path / "worker-1.log").read_text()[-4000:]
    finally:
        for proc in (doomed, survivor):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lost = progress.statuses()[0]
    assert (lost.regions_done, lost.merge) == (11, "waiting"), (
        f"the killed worker's one region must be missing: {lost}\n" + (tmp_path / "worker-0.log").read_text()[-4000:])

    _wait(lambda: not list(redis_conn.scan_iter(f"{PREFIX}:lease:*")), 10, "the killed job's lease to run out")
    assert main(["preprocess", str(slide), "--project", PROJECT, "--queue"]) == 0
    assert "12 regions, 11 done, 1 enqueued" in capsys.readouterr().out
    SimpleWorker([Queue(QUEUE, connection=redis_conn)], connection=redis_conn).work(burst=True)

    done = progress.statuses()[0]
    assert (done.regions_done, done.merge, done.errors) == (12, "done", {})
    assert main(["preprocess", "--status"]) == 0
    assert "regions 12/12  merge done" in capsys.readouterr().out
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    project_id = gateway.find_project(PROJECT).id
    try:
        tiles = Counter(t["data"]["tile_id"] for t in gateway.iter_tasks(project_id))
        assert tiles and max(tiles.values()) == 1, "a tile was imported twice"
        _assert_equals_single_process_run(slide, tmp_path, gateway, ls_client, set(tiles))
    finally:
        ls_client.projects.delete(id=project_id)


def _assert_equals_single_process_run(slide, tmp_path, gateway, ls_client, queued_tiles: set[str]) -> None:
    settings = preprocess_settings(data_dir=tmp_path / "single")  # the rest from the HALI_* environment
    single = run_preprocess(slide, "HALI single-process", settings, gateway)
    try:
        assert {t["data"]["tile_id"] for t in gateway.iter_tasks(single.project_id)} == queued_tiles
    finally:
        ls_client.projects.delete(id=single.project_id)
    queued = CellTable.load(DataLayout(tmp_path / "data", settings.ls_files_root).cells_path(single.slide_id))
    alone = CellTable.load(DataLayout(settings.data_dir, settings.ls_files_root).cells_path(single.slide_id))
    np.testing.assert_array_equal(queued.cell_ids, alone.cell_ids)
    np.testing.assert_array_equal(queued.tile_ids, alone.tile_ids)
    np.testing.assert_array_equal(queued.boxes, alone.boxes)
    np.testing.assert_allclose(queued.features, alone.features, rtol=1e-5, atol=1e-6)


def test_a_lease_is_exclusive_while_renewed_and_runs_out_when_its_holder_stops(redis_conn):
    progress = PreprocessProgress(redis_conn)
    with progress.lease("job-a", ttl_s=0.3) as held:
        time.sleep(0.6)  # twice the ttl: only the renewals keep it
        with progress.lease("job-a", ttl_s=0.3) as second:
            assert (held, second, progress.lease_alive("job-a")) == (True, False, True)
    assert not progress.lease_alive("job-a"), "a finished job releases its lease"
    redis_conn.set(f"{PREFIX}:lease:job-b", "a killed worker's token", px=200)  # no one renews it
    time.sleep(0.4)
    assert not progress.lease_alive("job-b")


def test_a_job_taken_off_the_queue_by_a_worker_that_died_is_enqueued_again(redis_conn):
    from preprocess.queue.jobs import _needs_enqueue

    queue, progress = Queue("hali-lost", connection=redis_conn), PreprocessProgress(redis_conn)
    waiting = queue.enqueue(print, job_id="hali-pp-s-k-waiting")
    taken = queue.enqueue(print, job_id="hali-pp-s-k-taken")
    redis_conn.lrem(queue.key, 0, taken.id)  # popped by a worker killed before it marked the job started
    assert taken.get_status(refresh=True) == "queued"
    assert not _needs_enqueue(queue, progress, waiting.id), "a job in the queue waits its turn"
    assert _needs_enqueue(queue, progress, taken.id), "a 'queued' job in no queue would never run"
    assert queue.fetch_job(taken.id) is None
