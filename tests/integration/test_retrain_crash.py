"""A worker killed mid-retrain (an out-of-memory kill) does not stall the project: its training lease frees
within seconds, a queued flag whose job will never run is cleared by the next webhook, and the labels the killed
run took are retrained by the next run, which the worker's reconcile enqueues without any further submit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from hali_backend import label_next_task, preprocess_settings, serve_backend
from redis import Redis
from redis.exceptions import LockError
from rq import Queue

from adapters.label_studio import LabelStudioGateway
from label_config import version_name
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.catchup import catch_up
from ml_backend.retrain.job import FLAG_CLEARED_WITHIN_S, enqueue_retrain
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings
from preprocess.run import run_preprocess

pytestmark = pytest.mark.integration
HOLD = """
import sys, time
from redis import Redis
from ml_backend.labels.redis_store import RedisLabelStore
with RedisLabelStore(Redis.from_url(sys.argv[1])).training_lease(5, lease_s=1.5, wait_s=5):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(redis_url: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, redis_url], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_workers_training_lease_frees_within_the_lease(redis_url, redis_conn):
    store = RedisLabelStore(redis_conn)
    holder = _holder(redis_url)
    try:
        time.sleep(3.0)  # twice the lease: only the holder's renewals keep it
        with pytest.raises(LockError), store.training_lease(5, lease_s=1.5, wait_s=0.5):
            pass
        holder.send_signal(signal.SIGKILL)  # no finally, no release: as the kernel's OOM killer does
        holder.wait()
        t0 = time.monotonic()
        with store.training_lease(5, lease_s=1.5, wait_s=5):
            waited = time.monotonic() - t0
        assert waited < 2.0, f"the dead worker's lease held the project for {waited:.1f} s"
    finally:
        holder.kill()


def test_a_queued_flag_whose_job_is_gone_does_not_block_retraining(redis_url, redis_conn):
    store, queue = RedisLabelStore(redis_conn), Queue("hali-crash", connection=Redis.from_url(redis_url))
    settings = BackendSettings(queue_name="hali-crash", redis_url=redis_url)
    # claimed a minute ago (the TTL tells its age); its job died with Redis' data
    assert store.claim_retrain(7, ttl_s=1800 - 60, job_id="hali-retrain-7-lost")
    first = enqueue_retrain(queue, store, 7, settings)
    assert first is not None and queue.count == 1 and store.queued_job(7) == first
    assert enqueue_retrain(queue, store, 7, settings) is None, "a retrain that will run is not doubled"
    assert queue.count == 1


def test_make_ups_redis_keeps_what_it_held_over_a_restart(tmp_path):
    from scripts import services

    port = services.free_port()
    proc = services.start_redis(port, tmp_path, persist=True)
    try:
        Redis(port=port).set("hali:p:1:pending", 4)
    finally:
        services.stop_process(proc)
    proc = services.start_redis(port, tmp_path, persist=True)
    try:
        assert Redis(port=port).get("hali:p:1:pending") == b"4"
    finally:
        services.stop_process(proc)


class _Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` runs, so nothing is put back on the way out."""


class _KilledMidPush(LabelStudioGateway):
    def import_predictions(self, project_id: int, predictions) -> int:
        super().import_predictions(project_id, predictions[:2])
        raise _Killed


def test_labels_a_killed_retrain_took_are_retrained_without_another_submit(
        hali_environ, label_studio, redis_url, redis_conn, ihc_slide, new_annotator):
    settings = BackendSettings(predictions_top_k=3, prune_after_s=0)
    store, queue = RedisLabelStore(redis_conn), Queue(settings.queue_name, connection=redis_conn)
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    with serve_backend(settings) as backend_url:  # Label Studio's webhook records the labels as pending
        pre = preprocess_settings(classes="Positive,Negative", mpp=0.25, cells_per_task=8, backend_url=backend_url)
        pid = run_preprocess(ihc_slide, "HALI killed retrain", pre, gateway).project_id
        label_next_task(new_annotator(), pid)
    assert store.pending(pid) == 6 and queue.count == 1

    assert store.release_claim(pid, store.queued_job(pid))  # the job starts (retrain_job), takes the 6 labels,
    with pytest.raises(_Killed):  # and dies mid-push
        run_retrain(pid, settings, _KilledMidPush.connect(label_studio.url, label_studio.api_key), store)
    assert store.pending(pid) == 0 and store.unfinished_retrain(pid) == 6
    queue.empty()

    with store.training_lease(pid, lease_s=30, wait_s=1):  # the dead worker's lease, not expired yet
        assert catch_up(pid, settings, gateway, store, queue)[1] is None, "a retrain that may still run is left be"
        job = catch_up(pid, settings, gateway, store, queue, full=True)[1]  # a worker that just started
    assert job is not None and queue.count == 1, "the killed retrain was not resumed: the project stalls"
    queue.empty()
    store.release_claim(pid, job)
    assert catch_up(pid, settings, gateway, store, queue)[1] is not None, "nor once its lease expired"

    report = run_retrain(pid, settings, gateway, store)  # what that job runs
    assert report.version == 2 and report.n_labels == 6, "the killed run's version name was used again"
    assert store.unfinished_retrain(pid) is None and store.pending(pid) == 0
    assert set(gateway.model_versions(pid)) == {version_name(0), version_name(2)}, "the killed run's rows stayed"
    assert catch_up(pid, settings, gateway, store, queue)[1] is None, "nothing left to resume"


class _KilledBeforeSwitch(LabelStudioGateway):
    def serve_version(self, project_id: int, model_version: str) -> None:
        raise _Killed  # the model is saved (latest.json names it), the project never served it


def test_a_run_killed_between_its_save_and_its_switch_leaves_no_predictions(
        hali_environ, label_studio, redis_conn, ihc_slide, new_annotator):
    settings = BackendSettings(predictions_top_k=3, prune_after_s=1800)  # versions that were live keep their grace
    store, gateway = RedisLabelStore(redis_conn), LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pre = preprocess_settings(classes="Positive,Negative", mpp=0.25, cells_per_task=8)
    pid = run_preprocess(ihc_slide, "HALI killed before switch", pre, gateway).project_id
    label_next_task(new_annotator(), pid)
    with pytest.raises(_Killed):
        run_retrain(pid, settings, _KilledBeforeSwitch.connect(label_studio.url, label_studio.api_key), store)
    assert gateway.model_versions(pid).get(version_name(1)) == 3

    assert run_retrain(pid, settings, gateway, store).version == 2
    assert set(gateway.model_versions(pid)) == {version_name(0), version_name(2)}, \
        "a version no annotator was ever served kept its predictions for the grace"
    assert run_retrain(pid, settings, gateway, store).version == 3
    assert set(gateway.model_versions(pid)) == {version_name(0), version_name(2), version_name(3)}, \
        "a version that was live keeps its grace"


def test_a_queued_flag_whose_job_was_killed_as_it_started_does_not_block_retraining(redis_url, redis_conn):
    """Found by bench/bench_kill.py: a worker killed between rq marking the job started and the job clearing the
    flag left the flag naming a "started" job, and no label could enqueue a retrain until it expired (30 min)."""
    store, queue = RedisLabelStore(redis_conn), Queue("hali-crash", connection=Redis.from_url(redis_url))
    settings = BackendSettings(queue_name="hali-crash", redis_url=redis_url)
    first = enqueue_retrain(queue, store, 7, settings)
    job = queue.fetch_job(first)
    pipe = redis_conn.pipeline()
    job.prepare_for_execution("killed-worker", pipe)  # what rq does as the job starts ...
    pipe.execute()
    job.started_at = datetime.now(UTC)
    job.save()  # ... and the worker dies before the job clears the flag
    assert enqueue_retrain(queue, store, 7, settings) is None, "a job that just started will clear it"
    _age_the_flag(redis_conn, 7, settings, FLAG_CLEARED_WITHIN_S + 1)
    assert enqueue_retrain(queue, store, 7, settings) is None, "it started a moment ago: it will clear it"
    job.started_at = datetime.now(UTC) - timedelta(seconds=FLAG_CLEARED_WITHIN_S + 1)
    job.save()
    second = enqueue_retrain(queue, store, 7, settings)
    assert second not in (None, first) and store.queued_job(7) == second


def test_a_queued_flag_whose_job_a_dead_worker_took_does_not_block_retraining(redis_url, redis_conn):
    """Found by bench/bench_kill.py: a worker killed after taking the job off the queue and before starting it left
    the job "queued" but in no queue, and the flag naming it blocked every retrain."""
    store, queue = RedisLabelStore(redis_conn), Queue("hali-crash", connection=Redis.from_url(redis_url))
    settings = BackendSettings(queue_name="hali-crash", redis_url=redis_url)
    first = enqueue_retrain(queue, store, 7, settings)
    job, _ = Queue.dequeue_any([queue], None, connection=queue.connection)  # the worker takes it, then dies
    assert job.id == first and job.get_status() == "queued" and queue.count == 0
    assert enqueue_retrain(queue, store, 7, settings) is None, "a flag this young is not even checked"
    _age_the_flag(redis_conn, 7, settings, FLAG_CLEARED_WITHIN_S + 1)
    second = enqueue_retrain(queue, store, 7, settings)
    assert second not in (None, first) and store.queued_job(7) == second and queue.count == 1


def _age_the_flag(redis_conn, project_id: int, settings: BackendSettings, age_s: float) -> None:
    """Make the queued flag look claimed ``age_s`` ago (its age is read from its TTL), as a real wait would."""
    redis_conn.expire(f"hali:p:{project_id}:queued", int(settings.job_timeout_s - age_s))


def test_a_retrain_that_starts_clears_only_its_own_queued_flag(redis_url, redis_conn):
    """Found by bench/bench_crowd.py on the merged main: a job that waited for the training lease cleared the flag of
    the job queued meanwhile, so each later webhook queued one more (4 waiting at once)."""
    store, queue = RedisLabelStore(redis_conn), Queue("hali-own-flag", connection=Redis.from_url(redis_url))
    settings = BackendSettings(queue_name="hali-own-flag", redis_url=redis_url)
    first = enqueue_retrain(queue, store, 7, settings)
    assert store.release_claim(7, first) and store.queued_job(7) is None  # the first job starts
    second = enqueue_retrain(queue, store, 7, settings)  # labels come while it waits for the lease
    store.start_retrain(7)  # it gets the lease and takes the labels
    assert not store.release_claim(7, first) and store.queued_job(7) == second
    assert enqueue_retrain(queue, store, 7, settings) is None, "the next labels wait for the second job"
    assert queue.count == 2
