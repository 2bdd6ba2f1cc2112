"""``hali worker``: an rq worker on the backend's queue and the preprocessing queue.

Workers on several machines may serve the same queues: they share one Redis (``HALI_REDIS_URL``) and one data
dir (``HALI_DATA_DIR``, mounted at the same path everywhere), and read slides at the paths they were
enqueued with.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from adapters.settings import redacted_url
from ml_backend.errors import BackendError
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)


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
    worker = Worker([Queue(name, connection=redis) for name in names], connection=redis)
    log.info("worker %s listening on queues %s at %s", worker.name, names, settings.redis_url)
    worker.work(burst=burst, with_scheduler=False)
    return 0


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
