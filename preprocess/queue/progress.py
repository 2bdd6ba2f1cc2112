"""Per-slide progress of queued preprocessing, in Redis: the one adapter the status command, the enqueuer and
the region/merge jobs share.

Keys (``<p>`` = ``hali:preprocess``)::

    <p>:slides                    set of slide ids ever enqueued
    <p>:slide:<id>                hash: slide_path, project, recipe_key, total, merge, merge_message
    <p>:slide:<id>:done           set of region ids whose part is written
    <p>:slide:<id>:errors         hash: region id (or "merge") -> last error message
    <p>:lease:<name>              a running job's lease: expires ``ttl`` after its last renewal

A lease tells a running job from a dead one: the job renews it from a thread while it works, so when a
worker is killed the lease runs out and a re-run of ``hali preprocess --queue`` enqueues the job again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis

log = logging.getLogger(__name__)

PREFIX = "hali:preprocess"
MERGE_STATES = ("waiting", "queued", "running", "done", "failed")


@dataclass(frozen=True)
class SlideProgress:
    """Where one slide stands: regions whose part is written out of all, the merge+import step, errors."""

    slide_id: str
    slide_path: str
    project: str
    regions_done: int
    regions_total: int
    merge: str
    merge_message: str
    errors: dict[str, str]

    def line(self) -> str:
        """One line for ``hali preprocess --status``."""
        done = f" ({self.merge_message})" if self.merge == "done" and self.merge_message else ""
        text = (f"{self.slide_id}  regions {self.regions_done}/{self.regions_total}  merge {self.merge}{done}"
                f"  errors {len(self.errors)}")
        if self.errors:
            name, message = sorted(self.errors.items())[0]
            text += f" ({name}: {message[:120]})"
        return f"{text}  {self.slide_path} -> {self.project!r}"


class PreprocessProgress:
    """Reads and writes the progress keys above on ``redis`` (a ``redis.Redis``)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def start(self, slide_id: str, slide_path: str, project: str, recipe_key: str, total: int,
              done: Iterable[str]) -> None:
        """Record an enqueue of ``slide_id``; progress made under another recipe is forgotten."""
        key = _slide_key(slide_id)
        if self._text(self._redis.hget(key, "recipe_key")) != recipe_key:
            self._redis.delete(f"{key}:done", f"{key}:errors")
        self._redis.hset(key, mapping={"slide_path": slide_path, "project": project, "recipe_key": recipe_key,
                                       "total": total})
        self._redis.hsetnx(key, "merge", "waiting")
        self._redis.sadd(f"{PREFIX}:slides", slide_id)
        done = list(done)
        if done:
            self._redis.sadd(f"{key}:done", *done)

    def region_done(self, slide_id: str, region_id: str) -> tuple[int, int]:
        """Mark a region's part written; returns (regions done, regions in the slide)."""
        key = _slide_key(slide_id)
        pipe = self._redis.pipeline()
        pipe.sadd(f"{key}:done", region_id)
        pipe.hdel(f"{key}:errors", region_id)
        pipe.scard(f"{key}:done")
        pipe.hget(key, "total")
        _, _, done, total = pipe.execute()
        return int(done), int(total or 0)

    def region_failed(self, slide_id: str, region_id: str, message: str) -> None:
        self._redis.hset(f"{_slide_key(slide_id)}:errors", region_id, message)

    def set_merge(self, slide_id: str, state: str, message: str = "") -> None:
        """Set the merge+import step's state (one of :data:`MERGE_STATES`); a failure is also an error."""
        if state not in MERGE_STATES:
            raise ValueError(f"merge state {state!r} is not one of {MERGE_STATES}")
        key = _slide_key(slide_id)
        self._redis.hset(key, mapping={"merge": state, "merge_message": message})
        if state == "failed":
            self._redis.hset(f"{key}:errors", "merge", message)
        else:
            self._redis.hdel(f"{key}:errors", "merge")

    def merge_state(self, slide_id: str) -> str:
        return self._text(self._redis.hget(_slide_key(slide_id), "merge")) or "waiting"

    def statuses(self) -> list[SlideProgress]:
        """Progress of every slide ever enqueued, by slide id."""
        ids = sorted(self._text(s) for s in self._redis.smembers(f"{PREFIX}:slides"))
        return [self.status(slide_id) for slide_id in ids]

    def status(self, slide_id: str) -> SlideProgress:
        key = _slide_key(slide_id)
        fields = {self._text(k): self._text(v) for k, v in self._redis.hgetall(key).items()}
        errors = {self._text(k): self._text(v) for k, v in self._redis.hgetall(f"{key}:errors").items()}
        return SlideProgress(slide_id, fields.get("slide_path", ""), fields.get("project", ""),
                             int(self._redis.scard(f"{key}:done")), int(fields.get("total", 0)),
                             fields.get("merge", "waiting"), fields.get("merge_message", ""), errors)

    def lease_alive(self, name: str) -> bool:
        """Whether a job holds the lease ``name`` and renewed it within its ttl."""
        return bool(self._redis.exists(f"{PREFIX}:lease:{name}"))

    @contextmanager
    def lease(self, name: str, ttl_s: float) -> Iterator[bool]:
        """Hold the lease ``name`` while the block runs, renewing it every ``ttl_s / 3`` from a thread.

        Yields False (and holds nothing) when another live job holds it.
        """
        key, token, ttl_ms = f"{PREFIX}:lease:{name}", uuid.uuid4().hex, max(1, int(ttl_s * 1000))
        if not self._redis.set(key, token, nx=True, px=ttl_ms):
            yield False
            return
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(key, token, ttl_ms, stop), daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join()
            if self._text(self._redis.get(key)) == token:
                self._redis.delete(key)

    def _renew(self, key: str, token: str, ttl_ms: int, stop: threading.Event) -> None:
        while not stop.wait(ttl_ms / 3000):
            if self._text(self._redis.get(key)) != token:
                log.warning("lease %s was lost (expired while this job ran); another worker may redo its work", key)
                return
            self._redis.pexpire(key, ttl_ms)

    @staticmethod
    def _text(value: bytes | str | None) -> str | None:
        return value.decode() if isinstance(value, bytes) else value


def _slide_key(slide_id: str) -> str:
    return f"{PREFIX}:slide:{slide_id}"
