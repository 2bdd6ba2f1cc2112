"""``hali worker``: an rq worker on the backend's queue."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from ml_backend.errors import BackendError
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)


def run_worker(settings: BackendSettings, burst: bool = False) -> int:
    """Work the queue until stopped (or until it is empty with ``burst``); returns an exit status."""
    _warm_up()

    redis = Redis.from_url(settings.redis_url)
    try:
        redis.ping()
    except RedisError as exc:
        raise BackendError(
            f"Redis at {settings.redis_url} is unreachable ({exc}); start redis-server or fix HALI_REDIS_URL"
        ) from exc
    worker = Worker([Queue(settings.queue_name, connection=redis)], connection=redis)
    log.info("worker %s listening on queue %r at %s", worker.name, settings.queue_name, settings.redis_url)
    worker.work(burst=burst, with_scheduler=False)
    return 0


def _warm_up() -> None:
    """Import what every job needs once, in the parent: rq forks a child per job, which then starts warm.

    Building the first torch optimiser imports torch._dynamo (about 3 s here); doing it once saves that
    on every retrain.
    """
    import torch

    import ml_backend.retrain  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
