"""RedisLabelStore: the backend's mirror of a project's annotations, and its retrain counter.

Label Studio stays the source of truth: webhooks (1 s timeout, no retry) may be lost, so every retrain
re-reads all annotations from the API and replaces this mirror (:meth:`replace_all`). The mirror lets the
webhook count new labels in well under a millisecond and lets a retrain run while Label Studio is down.

Keys, per project ``p``::

    hali:p:<p>:annotations  hash  annotation id -> {"task", "labels": {cell id: class}, "drawn", "updated_at"}
    hali:p:<p>:pending      int   cell labels new or changed since the last retrain started
    hali:p:<p>:queued       flag  a retrain is queued and has not started yet
    hali:p:<p>:status       hash  what the last retrain did (version, labels, seconds, ...)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from redis import Redis

from ml_backend.labels.records import AnnotationRecord, count_changed


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

    def claim_retrain(self, project_id: int, ttl_s: int) -> bool:
        """True for the one caller that should enqueue a retrain now (no other retrain is queued)."""
        return bool(self._r.set(_key(project_id, "queued"), "1", nx=True, ex=ttl_s))

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

    def lock(self, project_id: int, timeout_s: int):
        """A lock that keeps two workers from training one project at once."""
        return self._r.lock(_key(project_id, "train-lock"), timeout=timeout_s, blocking_timeout=timeout_s)


def _key(project_id: int, name: str) -> str:
    return f"hali:p:{project_id}:{name}"


def _decode(raw: bytes | str) -> AnnotationRecord:
    d = json.loads(raw)
    return AnnotationRecord(int(d["task_id"]), dict(d["labels"]), list(d.get("drawn", [])), d.get("updated_at", ""))
