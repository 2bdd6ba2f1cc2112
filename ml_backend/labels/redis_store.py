"""RedisLabelStore: the backend's mirror of a project's annotations, and its retrain counter.

Label Studio stays the source of truth: webhooks (1 s timeout, no retry) may be lost, so
:mod:`ml_backend.labels.reconcile` brings the mirror up to date from the API: incrementally (the tasks updated
since the sync mark) before every retrain and on the worker's schedule, and fully (every task, which also
catches deleted tasks) when a worker starts and every ``HALI_FULL_RECONCILE_S``. The mirror lets the webhook
count new labels in well under a millisecond, and a retrain read its labels without listing the project.

Keys, per project ``p``::

    hali:projects           set   projects the backend has seen (webhooks, retrains): the reconcile visits them
    hali:p:<p>:annotations  hash  annotation id -> AnnotationRecord as JSON (labels, drawn, lineage)
    hali:p:<p>:overlap      hash  task id -> readers Label Studio wants (only tasks with more than one)
    hali:p:<p>:deleted-tasks set  tasks of the task maps that Label Studio no longer has (last full reconcile)
    hali:p:<p>:sync         hash  "mark": Label Studio's newest task updated_at seen; "full_at": unix s
    hali:p:<p>:pending      int   cell labels new or changed since the last retrain started
    hali:p:<p>:pending-since str  unix s when the oldest of those arrived (the stale-retrain warning)
    hali:p:<p>:queued       str   the id of the retrain job queued and not started yet (a flag)
    hali:p:<p>:training     int   labels the retrain in progress took from pending; left behind when its worker is
                                  killed, and then taken again by the next run (:meth:`RedisLabelStore.start_retrain`)
    hali:p:<p>:train-lock   lock  held by the worker training the project, a lease renewed while it runs
    hali:p:<p>:status       hash  what the last retrain did (version, labels, seconds, ...)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from redis.lock import Lock

from ml_backend.labels.records import AnnotationRecord, count_changed

log = logging.getLogger(__name__)


class RedisLabelStore:
    def __init__(self, redis: Redis) -> None:
        self._r = redis
        self._record = redis.register_script(_RECORD_LUA)  # loaded on first use (EVALSHA, then EVAL once)
        self._claim = redis.register_script(_CLAIM_LUA)

    @classmethod
    def from_url(cls, url: str) -> RedisLabelStore:
        return cls(Redis.from_url(url))

    def record(self, project_id: int, annotation_id: int, rec: AnnotationRecord) -> int:
        """Store one annotation; returns the project's pending count after adding its new or changed labels.

        One round trip (a Lua script compares the stored labels with ``rec``'s): the webhook's Redis time is
        mostly round trips, each a wake-up of redis-server that a busy machine makes wait (docs/serving.md)."""
        changed_args = [x for cell, label in rec.labels.items() for x in (cell, label)]
        keys = [_key(project_id, "annotations"), _key(project_id, "pending"), _key(project_id, "pending-since"),
                _PROJECTS]
        return int(self._record(keys=keys, args=[str(annotation_id), json.dumps(asdict(rec)), project_id, time.time(),
                                                 *changed_args]))

    def apply(self, project_id: int, upserts: Mapping[int, AnnotationRecord], deletes: Iterable[int] = ()) -> int:
        """Write ``upserts`` and remove ``deletes`` (annotation ids); returns the cell labels they change."""
        key, deletes = _key(project_id, "annotations"), [str(i) for i in deletes]
        ids = [str(i) for i in upserts] + deletes
        old = {k: _decode(v).labels for k, v in zip(ids, self._r.hmget(key, ids) if ids else []) if v}
        changed = sum(count_changed(old.get(str(a), {}), r.labels) for a, r in upserts.items())
        changed += sum(len(old.get(a, {})) for a in deletes)
        pipe = self._r.pipeline(transaction=True)
        if upserts:
            pipe.hset(key, mapping={str(k): json.dumps(asdict(v)) for k, v in upserts.items()})
        if deletes:
            pipe.hdel(key, *deletes)
        pipe.sadd(_PROJECTS, project_id)
        pipe.execute()
        return changed

    def projects(self) -> list[int]:
        """Projects the backend has seen, sorted."""
        return sorted(int(p) for p in self._r.smembers(_PROJECTS))

    def sync_mark(self, project_id: int) -> str | None:
        """Label Studio's newest task ``updated_at`` the mirror has read up to (an ISO time), or None."""
        raw = self._r.hget(_key(project_id, "sync"), "mark")
        return None if raw is None else raw.decode()

    def set_sync_mark(self, project_id: int, mark: str, full: bool = False) -> None:
        mapping: dict[str, Any] = {"mark": mark, **({"full_at": time.time()} if full else {})}
        self._r.hset(_key(project_id, "sync"), mapping=mapping)

    def full_reconcile_at(self, project_id: int) -> float | None:
        raw = self._r.hget(_key(project_id, "sync"), "full_at")
        return None if raw is None else float(raw)

    def overlaps(self, project_id: int) -> dict[int, int]:
        """Task id -> readers wanted, for the tasks that want more than one."""
        return {int(k): int(v) for k, v in self._r.hgetall(_key(project_id, "overlap")).items()}

    def set_overlaps(self, project_id: int, overlaps: Mapping[int, int], replace: bool = False) -> None:
        """Record each task's wanted readers (1 removes it); ``replace``: these are every task's."""
        key = _key(project_id, "overlap")
        pipe = self._r.pipeline(transaction=True)
        if replace:
            pipe.delete(key)
        wide = {str(t): n for t, n in overlaps.items() if n > 1}
        narrow = [str(t) for t, n in overlaps.items() if n <= 1]
        if wide:
            pipe.hset(key, mapping=wide)
        if narrow and not replace:
            pipe.hdel(key, *narrow)
        pipe.execute()

    def deleted_tasks(self, project_id: int) -> set[int]:
        """Tasks the task maps hold but Label Studio no longer has (found by the last full reconcile)."""
        return {int(t) for t in self._r.smembers(_key(project_id, "deleted-tasks"))}

    def set_deleted_tasks(self, project_id: int, task_ids: Iterable[int]) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(_key(project_id, "deleted-tasks"))
        if ids := [int(t) for t in task_ids]:
            pipe.sadd(_key(project_id, "deleted-tasks"), *ids)
        pipe.execute()

    def pending_since(self, project_id: int) -> float | None:
        """Unix seconds when the oldest label not yet in a retrain arrived, or None."""
        raw = self._r.get(_key(project_id, "pending-since"))
        return None if raw is None else float(raw)

    def try_lock(self, name: str, ttl_s: float) -> bool:
        """True for the one caller that takes ``name`` for ``ttl_s`` seconds (the scheduled reconcile's tick)."""
        return bool(self._r.set(f"hali:lock:{name}", "1", nx=True, px=max(1, int(ttl_s * 1000))))

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

    def claim_or_peek(self, project_id: int, ttl_s: int, job_id: str,
                      job_key_prefix: str) -> tuple[str | None, str | None, float]:
        """:meth:`claim_retrain` and, when another job holds the flag, a look at it, in one round trip: (None, None,
        0) when ``job_id`` now holds the flag; else the holder's job id, its rq status (the ``status`` field of the
        hash ``job_key_prefix + id``; None when there is no such job) and the flag's age in seconds (from its TTL,
        so ``ttl_s`` must be what every claimer passes)."""
        reply = list(self._claim(keys=[_key(project_id, "queued")], args=[job_id, ttl_s, job_key_prefix]))
        if not reply:
            return None, None, 0.0
        held, age_ms, status = reply[0], reply[1], reply[2] if len(reply) > 2 else None
        return _text(held), None if status is None else _text(status), max(0.0, int(age_ms) / 1000)

    def queued_job(self, project_id: int) -> str | None:
        """The job id the queued flag names, or None when no retrain is queued."""
        raw = self._r.get(_key(project_id, "queued"))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def release_claim(self, project_id: int, job_id: str) -> bool:
        """Clear the queued flag if it still names ``job_id``: a job that will never start (lost or failed), or one
        that starts now, so the next labels may queue another. A flag naming a job queued since (while this one
        waited for the training lease) stays, or every webhook would queue one more job behind it (bench_crowd
        saw 4 waiting). True if it was cleared."""
        return bool(self._r.eval(_CLEAR_IF_MINE, 1, _key(project_id, "queued"), job_id))

    def start_retrain(self, project_id: int) -> int:
        """Called by the training lease's holder as its retrain starts: moves the pending count, plus whatever a
        run that never finished (a killed worker) left in ``training``, into ``training``; returns that count."""
        keys = [_key(project_id, k) for k in ("pending", "training", "queued", "pending-since")]
        return int(self._r.eval(_TAKE_PENDING, len(keys), *keys))

    def end_retrain(self, project_id: int, failed: bool = False) -> None:
        """The retrain's version is live (or ``failed``: its labels go back to pending, so the next label or
        reconcile retries rather than waiting for ``HALI_RETRAIN_EVERY`` more)."""
        keys = [_key(project_id, k) for k in ("training", "pending", "pending-since")]
        self._r.eval(_GIVE_BACK, len(keys), *keys, "1" if failed else "0", time.time())

    def unfinished_retrain(self, project_id: int) -> int | None:
        """The labels a retrain took and has not finished with (running, or its worker was killed), else None."""
        raw = self._r.get(_key(project_id, "training"))
        return None if raw is None else int(raw)

    def training_lease_held(self, project_id: int) -> bool:
        """Whether a live worker holds the project's training lease (a killed one's expires within the lease)."""
        return bool(self._r.exists(_key(project_id, "train-lock")))

    def add_pending(self, project_id: int, n: int) -> None:
        if n:
            pipe = self._r.pipeline()
            pipe.incrby(_key(project_id, "pending"), n)
            pipe.set(_key(project_id, "pending-since"), time.time(), nx=True)
            pipe.execute()

    def pending(self, project_id: int) -> int:
        return int(self._r.get(_key(project_id, "pending")) or 0)

    def set_status(self, project_id: int, status: Mapping[str, Any]) -> None:
        self._r.sadd(_PROJECTS, project_id)
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


_PROJECTS = "hali:projects"

# KEYS: annotations hash, pending, pending-since, projects set. ARGV: annotation id, record JSON, project id, now,
# then cell, label, cell, label, ... of the record. Returns the pending count.
_RECORD_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local before = {}
if old then
  local labels = cjson.decode(old)['labels']
  if type(labels) == 'table' then before = labels end
end
local changed = 0
for i = 5, #ARGV, 2 do
  if before[ARGV[i]] ~= ARGV[i + 1] then changed = changed + 1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local pending = redis.call('INCRBY', KEYS[2], changed)
redis.call('SADD', KEYS[4], ARGV[3])
if changed > 0 then redis.call('SET', KEYS[3], ARGV[4], 'NX') end
return pending
"""
# KEYS: the queued flag. ARGV: job id, ttl s, rq's job key prefix. Returns {} when claimed, else
# {holder, the flag's age in ms, the holder's rq status (absent when it has no job hash)}.
_CLAIM_LUA = """
local held = redis.call('GET', KEYS[1])
if held then
  local age = tonumber(ARGV[2]) * 1000 - redis.call('PTTL', KEYS[1])
  return {held, age, redis.call('HGET', ARGV[3] .. held, 'status')}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {}
"""
# KEYS: pending, training, queued (left alone: it names a job still to run), pending-since. Atomic, so a kill
# can never lose the count between two calls.
_TAKE_PENDING = """
local taken = tonumber(redis.call('GETSET', KEYS[1], 0) or 0) + tonumber(redis.call('GET', KEYS[2]) or 0)
redis.call('SET', KEYS[2], taken)
redis.call('DEL', KEYS[4])
return taken
"""
# KEYS: the queued flag; ARGV: a job id. Deletes the flag only if it names that job.
_CLEAR_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: training, pending, pending-since; ARGV: failed ("1"/"0"), now (unix s).
_GIVE_BACK = """
local n = tonumber(redis.call('GET', KEYS[1]) or 0)
redis.call('DEL', KEYS[1])
if ARGV[1] == '1' and n > 0 then
  redis.call('INCRBY', KEYS[2], n)
  redis.call('SET', KEYS[3], ARGV[2], 'NX')
end
return n
"""
_RECORD_FIELDS = frozenset(f.name for f in fields(AnnotationRecord))


def _key(project_id: int, name: str) -> str:
    return f"hali:p:{project_id}:{name}"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _decode(raw: bytes | str) -> AnnotationRecord:
    d = json.loads(raw)  # records written before the lineage fields get their defaults
    return AnnotationRecord(**{k: v for k, v in d.items() if k in _RECORD_FIELDS})
