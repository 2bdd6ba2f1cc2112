"""rq job entry points and how the web process enqueues them.

A job is a process edge: it builds its own settings and adapters from the environment, then calls the
orchestration function (``run_retrain``).
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import torch
from redis import Redis
from rq import Queue, get_current_job
from rq.job import Job, JobStatus
from rq.utils import now as rq_now

from adapters.label_studio import LabelStudioGateway
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.run import run_retrain
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)
FLAG_CLEARED_WITHIN_S = 10.0  # a started retrain clears its queued flag well within this (a fork and a Redis call)

# A flag younger than this whose job does not exist yet belongs to a caller between its claim and its enqueue: not a
# lost job. (Replacing it queued a second retrain when two webhooks came within a millisecond: bench_crowd.py.)
ENQUEUE_GRACE_S = 30.0
# rq statuses of a job that still waits to run (queued, deferred or scheduled) or runs now
_WILL_RUN = frozenset(s.value for s in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.STARTED))


def retrain_job(project_id: int) -> dict[str, Any]:
    """rq job: retrain the head of ``project_id`` and re-rank its queue."""
    settings = BackendSettings()
    store = RedisLabelStore(Redis.from_url(settings.redis_url))
    job = get_current_job()
    if job is not None:  # first: a job killed before this leaves the flag to _will_run's age check
        store.release_claim(project_id, job.id)
    torch.set_num_threads(settings.torch_threads)
    gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
    with frozen_gc():
        return asdict(run_retrain(project_id, settings, gateway, store))


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off every object that exists on entry, until exit.

    A retrain allocates about three containers per open cell for its Label Studio predictions, and each
    full collection would walk again everything the process already holds (torch and the backend's
    modules: hundreds of thousands of objects). Frozen, building 95,000 regions took 0.47 s of CPU
    instead of 0.80 s (docs/benchmarks.md). Unfrozen on exit, so a worker that does not fork a child per
    job still frees them.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def enqueue_retrain(queue: Queue, store: RedisLabelStore, project_id: int, settings: BackendSettings) -> str | None:
    """Enqueue a retrain unless one is already waiting; returns the job id, or None when one waits.

    The queued flag names its job: a flag whose job is gone (Redis lost it; after ``ENQUEUE_GRACE_S``), failed,
    was stopped before it started, or was killed as it started (:func:`_will_run`, asked only of a flag older than
    ``FLAG_CLEARED_WITHIN_S``) is cleared, so a crash never blocks retraining until the flag expires.
    """
    job_id = f"hali-retrain-{project_id}-{uuid.uuid4().hex[:12]}"
    waiting, status, age_s = store.claim_or_peek(project_id, settings.job_timeout_s, job_id,
                                                 Job.redis_job_namespace_prefix)
    if waiting is not None:  # every webhook past the threshold lands here while a retrain waits: one round trip
        if status is None and age_s < ENQUEUE_GRACE_S:
            return None  # its claimer is enqueueing it right now
        if status in _WILL_RUN and (age_s < FLAG_CLEARED_WITHIN_S or _will_run(queue, waiting)):
            return None  # it will run (a young flag's job cannot have been killed as it started yet)
        log.warning("project %s: queued retrain %s will never run; enqueueing another", project_id, waiting)
        store.release_claim(project_id, waiting)
        if not store.claim_retrain(project_id, ttl_s=settings.job_timeout_s, job_id=job_id):
            return None
    job = queue.enqueue(
        retrain_job,
        project_id,
        job_id=job_id,
        job_timeout=settings.job_timeout_s,
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"retrain project {project_id}",
    )
    log.info("project %s: retrain queued as job %s", project_id, job.id)
    return job.id


def _will_run(queue: Queue, job_id: str) -> bool:
    """Whether the job ``job_id`` still waits to run (queued, deferred or scheduled) or runs now.

    A retrain clears the queued flag as it starts (:func:`retrain_job`), so a job that started more than
    :data:`FLAG_CLEARED_WITHIN_S` ago and still holds the flag was killed first, and a "queued" job no longer in
    the queue was taken by a worker that died before starting it (rq fails both only when it next cleans its
    registries, minutes later): the flag must not hold retraining back until it expires. At worst (a job taken a
    moment ago) one retrain more is queued.
    """
    job = queue.fetch_job(job_id)
    if job is None:
        return False
    status = job.get_status()
    if status == JobStatus.STARTED:
        return job.started_at is None or (rq_now() - job.started_at).total_seconds() < FLAG_CLEARED_WITHIN_S
    if status == JobStatus.QUEUED:
        return queue.get_job_position(job_id) is not None
    return status in (JobStatus.DEFERRED, JobStatus.SCHEDULED)
