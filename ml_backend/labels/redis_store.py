"""RedisLabelStore: the backend's mirror of a project's annotations, and its retrain counter.

Label Studio stays the source of truth: webhooks (1 s timeout, no retry) may be lost, so every retrain
re-reads all annotations from the API and replaces this mirror (:meth:`replace_all`). The mirror lets the
webhook count new labels in well under a millisecond and lets a retrain run while Label Studio is down.

Keys, per project ``p``::

    hali:p:<p>:annotations  hash  annotation id -> {"task", "labels": {cell id: class}, "drawn", "updated_at"}
    hali:p:<p>:pending      int   cell labels new or changed since the last retrain started
    hali:p:<p>:queued       str   the id of the retrain job queued and not started yet (a flag)
    hali:p:<p>:train-lock   lock  held by the worker training the project, a lease renewed while it runs
    hali:p:<p>:status       hash  what the last retrain did (version, labels, seconds, ...)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from redis import Redis
from redis.exceptions import LockError, WatchError
from redis.lock import Lock

from ml_backend.labels.records import AnnotationRecord, count_changed

log = logging.getLogger(__name__)


class RedisLabelStore:
    def __init__(self, redis: Redis) -> None:
        self._r = redis

    def record(self, project_id: int, annotation_id: int, rec: AnnotationRecord) -> int:
        """Store one annotation; returns the project's pending count after adding its new or changed labels."""
        key = _key(project_id, "annotations")
        old_raw = self._r.hget(key, str(annotation_id))
        old = _decode(old_raw).labels if old_raw else {}
        pipe = self._r.pipeline()
        pipe.hset(key, str(annotation_id), json.dumps(asdict(rec)))
        pipe.incrby(_key(project_id, "pending"), count_changed(old, rec.labels))
        return int(pipe.execute()[1])

    def delete(self, project_id: int, annotation_ids: Iterable[int]) -> None:
        ids = [str(i) for i in annotation_ids]
        if ids:
            self._r.hdel(_key(project_id, "annotations"), *ids)

    def replace_all(self, project_id: int, records: Mapping[int, AnnotationRecord]) -> None:
        """Make the mirror equal to ``records`` (read from Label Studio) in one transaction."""
        key = _key(project_id, "annotations")
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        if records:
            pipe.hset(key, mapping={str(k): json.dumps(asdict(v)) for k, v in records.items()})
        pipe.execute()

    def records(self, project_id: int) -> dict[int, AnnotationRecord]:
        raw = self._r.hgetall(_key(project_id, "annotations"))
        return {int(k): _decode(v) for k, v in raw.items()}

    def claim_retrain(self, project_id: int, ttl_s: int, job_id: str = "1") -> bool:
        """True for the one caller that should enqueue a retrain now (no other retrain is queued); the flag
        holds ``job_id``, the job that will clear it when it starts."""
        return bool(self._r.set(_key(project_id, "queued"), job_id, nx=True, ex=ttl_s))

    def queued_job(self, project_id: int) -> str | None:
        """The job id the queued flag names, or None when no retrain is queued."""
        raw = self._r.get(_key(project_id, "queued"))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def release_claim(self, project_id: int, job_id: str) -> None:
        """Clear the queued flag if it still names ``job_id`` (a job that will never start: lost or failed)."""
        key = _key(project_id, "queued")
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if self.queued_job(project_id) == job_id:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except WatchError:  # someone else changed it meanwhile: theirs stands
                pass

    def start_retrain(self, project_id: int) -> int:
        """Called when a retrain starts: clears the queued flag and returns (and resets) the pending count."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(_key(project_id, "queued"))
        pipe.getset(_key(project_id, "pending"), 0)
        return int(pipe.execute()[1] or 0)

    def add_pending(self, project_id: int, n: int) -> None:
        if n:
            self._r.incrby(_key(project_id, "pending"), n)

    def pending(self, project_id: int) -> int:
        return int(self._r.get(_key(project_id, "pending")) or 0)

    def set_status(self, project_id: int, status: Mapping[str, Any]) -> None:
        self._r.hset(_key(project_id, "status"), mapping={k: json.dumps(v) for k, v in status.items()})

    def status(self, project_id: int) -> dict[str, Any]:
        return {k.decode() if isinstance(k, bytes) else k: json.loads(v)
                for k, v in self._r.hgetall(_key(project_id, "status")).items()}

    @contextmanager
    def training_lease(self, project_id: int, lease_s: float, wait_s: float) -> Iterator[None]:
        """Hold the project's training lock while the block runs, as a lease of ``lease_s`` seconds that a
        thread renews every third of it: a worker killed mid-retrain (an out-of-memory kill) frees it within
        ``lease_s``, not after the whole job timeout. Waits up to ``wait_s`` for another holder."""
        lock = self._r.lock(_key(project_id, "train-lock"), timeout=lease_s, blocking_timeout=wait_s,
                            thread_local=False)  # the renewing thread must see the token
        if not lock.acquire():
            raise LockError(f"project {project_id}: another worker held the training lock for {wait_s} s")
        done = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lock, lease_s / 3.0, done), daemon=True,
                                   name=f"hali-lease-{project_id}")
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            try:
                lock.release()
            except LockError:  # it expired (the process stalled past the lease): nothing to release
                log.warning("project %s: the training lease had expired before release", project_id)


def _renew(lock: Lock, every_s: float, done: threading.Event) -> None:
    while not done.wait(every_s):
        try:
            lock.reacquire()
        except LockError:
            log.warning("training lease lost: another worker may start the same retrain")
            return


def _key(project_id: int, name: str) -> str:
    return f"hali:p:{project_id}:{name}"


def _decode(raw: bytes | str) -> AnnotationRecord:
    d = json.loads(raw)
    return AnnotationRecord(int(d["task_id"]), dict(d["labels"]), list(d.get("drawn", [])), d.get("updated_at", ""))
