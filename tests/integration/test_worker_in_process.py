"""``hali worker`` runs retrain jobs in its own process (so their caches outlive a job) and the rest forked."""

from __future__ import annotations

import os

from rq import Queue

from ml_backend.settings import BackendSettings
from ml_backend.worker import run_worker


def _settings(redis_url: str, in_process: bool) -> BackendSettings:
    return BackendSettings(redis_url=redis_url, queue_name="hali-test-retrain", retrain_in_process=in_process,
                           preprocess_queue_name="hali-test-preprocess", reconcile_s=0)


def _run_both(redis_conn, settings: BackendSettings) -> tuple[int, int]:
    """The pid that ran a job on the retrain queue, and on the preprocessing queue (a burst worker)."""
    retrain = Queue(settings.queue_name, connection=redis_conn).enqueue(os.getpid)
    other = Queue(settings.preprocess_queue_name, connection=redis_conn).enqueue(os.getpid)
    assert run_worker(settings, burst=True) == 0
    retrain.refresh()
    other.refresh()
    assert retrain.is_finished and other.is_finished, (retrain.get_status(), other.get_status())
    return retrain.return_value(), other.return_value()


def test_retrain_jobs_run_in_the_worker_process_and_preprocessing_jobs_in_a_child(redis_url, redis_conn):
    retrain_pid, other_pid = _run_both(redis_conn, _settings(redis_url, in_process=True))
    assert retrain_pid == os.getpid()
    assert other_pid != os.getpid()


def test_retrain_in_process_off_forks_every_job(redis_url, redis_conn):
    retrain_pid, other_pid = _run_both(redis_conn, _settings(redis_url, in_process=False))
    assert retrain_pid != os.getpid() and other_pid != os.getpid()
