"""A worker killed mid-retrain (an out-of-memory kill) does not stall the project: its training lease frees
within seconds, and a queued flag whose job will never run is cleared by the next webhook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from redis.exceptions import LockError
from rq import Queue

from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.job import enqueue_retrain
from ml_backend.settings import BackendSettings

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
