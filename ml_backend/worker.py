"""``hali worker``: an rq worker on the backend's queue and the preprocessing queue.

Workers on several machines may serve the same queues: they share one Redis (``HALI_REDIS_URL``) and one data
dir (``HALI_DATA_DIR``, mounted at the same path everywhere), and read slides at the paths they were
enqueued with.
"""

from __future__ import annotations

import logging
import threading
from typing import ClassVar

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.worker import WorkerStatus

from adapters.settings import redacted_url
from ml_backend.errors import BackendError
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)


class HaliWorker(Worker):
    """rq's forking worker, except that jobs of ``in_process_queues`` run in the worker's own process, as rq's
    ``SimpleWorker`` runs every job.

    A retrain then finds what the previous one left in this process (:mod:`ml_backend.retrain.cells`): the
    project's tiles, cell layout, cell tables and neighbour graphs (at 1M cells, about 10 s to rebuild from the
    files). Preprocessing jobs still get a forked child each, which frees their memory when they end.
    """

    in_process_queues: ClassVar[frozenset[str]] = frozenset()

    def execute_job(self, job: Job, queue: Queue) -> None:
        if queue.name not in self.in_process_queues:
            return super().execute_job(job, queue)
        execution = self.prepare_execution(job)
        self.perform_job(job, queue, execution)
        self.set_state(WorkerStatus.IDLE)
        return None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """An in-process job sends no heartbeat until it ends: its TTL covers its whole timeout."""
        if job.origin in self.in_process_queues:
            return SimpleWorker.get_heartbeat_ttl(self, job, working_time)  # type: ignore[arg-type]
        return super().get_heartbeat_ttl(job, working_time)


def run_worker(settings: BackendSettings, burst: bool = False, queues: list[str] | None = None) -> int:
    """Work ``queues`` (default: retrain and preprocessing) until stopped, or until they are empty with
    ``burst``; returns an exit status."""
    names = queues or [settings.queue_name, settings.preprocess_queue_name]
    _warm_up(names, settings)

    redis = Redis.from_url(settings.redis_url)
    try:
        redis.ping()
    except RedisError as exc:
        raise BackendError(
            f"Redis at {redacted_url(settings.redis_url)} is unreachable ({exc}); start redis-server or fix HALI_REDIS_URL"
        ) from exc
    worker_class = type("HaliWorker", (HaliWorker,), {
        "in_process_queues": frozenset([settings.queue_name] if settings.retrain_in_process else [])})
    worker = worker_class([Queue(name, connection=redis) for name in names], connection=redis)
    log.info("worker %s listening on queues %s at %s", worker.name, names, settings.redis_url)
    stop = _start_catch_up(settings, names, burst, redis)
    try:
        worker.work(burst=burst, with_scheduler=False)
    finally:
        stop.set()
    return 0


def _start_catch_up(settings: BackendSettings, queues: list[str], burst: bool, redis: Redis) -> threading.Event:
    """The scheduled reconcile (:mod:`ml_backend.retrain.catchup`) in a daemon thread of a retrain worker."""
    stop = threading.Event()
    if settings.reconcile_s > 0 and settings.queue_name in queues and not burst:
        from ml_backend.labels.redis_store import RedisLabelStore
        from ml_backend.retrain.catchup import catch_up_forever

        own = Redis.from_url(settings.redis_url)  # its own connections: rq's fork must not share them
        args = (settings, RedisLabelStore(own), Queue(settings.queue_name, connection=own), stop)
        threading.Thread(target=catch_up_forever, args=args, daemon=True, name="hali-reconcile").start()
        log.info("reconciling labels with Label Studio every %g s (every task every %g s)", settings.reconcile_s,
                 settings.full_reconcile_s)
    return stop


def _warm_up(queues: list[str], settings: BackendSettings) -> None:
    """Import what every job needs once, in the parent: rq forks a child per job, which then starts warm.

    Building the first torch optimiser imports torch._dynamo (about 3 s here); doing it once saves that
    on every retrain. Region jobs need the slide reader, the segmenter and the featurizers (scikit-image,
    scipy, OpenSlide, torchvision: a few seconds of imports that would otherwise repeat in every region).
    """
    import torch

    if settings.queue_name in queues:
        import ml_backend.retrain.run  # noqa: F401

        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    if settings.preprocess_queue_name in queues:
        import preprocess.queue.jobs  # noqa: F401  (imports preprocess.run and all it needs)
