"""Catching up with Label Studio on a schedule: labels that no webhook announced still reach a retrain.

``hali worker`` runs :func:`catch_up_forever` in a thread: every ``HALI_RECONCILE_S`` seconds, for every project
the backend knows (the Redis set of projects, plus the project folders of the data dir), one worker (a Redis
lock) reads the tasks updated since the mirror's sync mark (:func:`~ml_backend.labels.reconcile.
reconcile_incremental`), or every task in the second round after the worker started and whenever
``HALI_FULL_RECONCILE_S`` has passed. The first round after a start is incremental (a full one when the mirror has
no sync mark): it finds the labels an outage left behind in one request, where listing every task first took
20 s of a 60 s budget on 1,100 tasks (``bench/bench_crowd.py``, docs/serving.md).
Labels it finds new or changed count as pending, and a retrain is enqueued when it found any (they came in while
the backend or Redis was down), when the pending count reached ``HALI_RETRAIN_EVERY`` (a lost enqueue), or when a
retrain took labels and never finished (its worker was killed: the next run takes them, see
:meth:`~ml_backend.labels.redis_store.RedisLabelStore.start_retrain`).
It also logs the stale-retrain warning (:func:`stale_warning`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from adapters.errors import LabelStudioError
from adapters.label_studio import LabelStudioGateway
from label_config import parse_label_set
from ml_backend.labels.reconcile import ReconcileReport, reconcile_full, reconcile_incremental
from ml_backend.labels.redis_store import RedisLabelStore
from ml_backend.retrain.job import enqueue_retrain
from ml_backend.settings import BackendSettings
from preprocess.layout import DataLayout

if TYPE_CHECKING:
    from rq import Queue

log = logging.getLogger(__name__)


def catch_up(project_id: int, settings: BackendSettings, gateway: LabelStudioGateway, store: RedisLabelStore,
             queue: Queue, full: bool = False) -> tuple[ReconcileReport, str | None]:
    """Reconcile ``project_id``'s mirror (counting what changed as pending) and enqueue a retrain when due;
    returns the report and the job id enqueued (None when none was)."""
    labels = parse_label_set(gateway.project_settings(project_id).label_config)
    reconcile = reconcile_full if full else reconcile_incremental
    report = reconcile(project_id, gateway, store, labels, count_pending=True)
    pending, killed = store.pending(project_id), _killed_retrain(store, project_id, full)
    job = None
    if (report.changed and pending > 0) or pending >= settings.retrain_every or killed:
        job = enqueue_retrain(queue, store, project_id, settings)
    if killed:
        log.warning("project %s: a retrain did not finish (its worker was killed?); retrain %s resumes it",
                    project_id, job or "already queued")
    if report.changed:
        log.info("project %s: %s reconcile found %d cell labels no webhook announced (%d tasks read); retrain %s",
                 project_id, report.kind, report.changed, report.tasks_read, job or "already queued")
    if warning := stale_warning(store, project_id, settings.stale_retrain_s):
        log.warning("project %s: %s", project_id, warning)
    return report, job


def _killed_retrain(store: RedisLabelStore, project_id: int, full: bool) -> bool:
    """Whether a retrain took labels and never finished, its worker gone: its lease has expired, or this is a full
    round (a worker that just started: the likeliest moment after a crash; the job it enqueues waits for the
    lease, so a retrain still running is at worst followed by one more)."""
    if store.unfinished_retrain(project_id) is None:
        return False
    return full or not store.training_lease_held(project_id)


def stale_warning(store: RedisLabelStore, project_id: int, stale_s: float, now: float | None = None) -> str | None:
    """A sentence when labels have waited more than ``stale_s`` seconds for a retrain, else None."""
    since, pending = store.pending_since(project_id), store.pending(project_id)
    waited = (now or time.time()) - since if since is not None else 0.0
    if pending <= 0 or waited <= stale_s:
        return None
    return (f"{pending} labels have waited {waited:.0f} s for a retrain (more than HALI_STALE_RETRAIN_S={stale_s:g}); "
            "check that a `hali worker` serves the queue and read its log")


def known_projects(store: RedisLabelStore, layout: DataLayout) -> list[int]:
    """Projects in Redis's set plus those with a folder in the data dir (models or task maps), sorted."""
    folders = layout.data_dir / "projects"
    on_disk = {int(p.name) for p in folders.iterdir() if p.name.isdigit()} if folders.is_dir() else set()
    return sorted(set(store.projects()) | on_disk)


def catch_up_forever(settings: BackendSettings, store: RedisLabelStore, queue: Queue, stop: threading.Event) -> None:
    """Run :func:`catch_up` on every known project every ``settings.reconcile_s`` until ``stop`` is set."""
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    gateway: LabelStudioGateway | None = None
    started, delay, first = time.time(), 1.0, True  # the first round soon after start
    while not stop.wait(delay):
        delay = settings.reconcile_s
        try:
            gateway = gateway or LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value())
            for project_id in known_projects(store, layout):
                _tick(project_id, settings, gateway, store, queue, started, first)
            first = False
        except Exception as exc:  # noqa: BLE001  (the thread's edge: LS or Redis down must not end the loop)
            log.warning("reconcile paused (%s: %s); trying again in %g s", exc.__class__.__name__, exc, delay)


def _tick(project_id: int, settings: BackendSettings, gateway: LabelStudioGateway, store: RedisLabelStore,
          queue: Queue, started: float, first: bool = False) -> None:
    if not store.try_lock(f"reconcile:{project_id}", settings.reconcile_s * 0.9):
        return  # another worker reconciles it in this round
    last_full = store.full_reconcile_at(project_id) or 0.0
    full = not first and (last_full < started or time.time() - last_full > settings.full_reconcile_s)
    try:
        catch_up(project_id, settings, gateway, store, queue, full)
    except LabelStudioError as exc:
        log.info("project %s: not reconciled: %s", project_id, exc)
