"""``hali preprocess --queue``: one rq job per region of a slide, then one merge+import job per slide.

Workers on any number of machines share one Redis and one data dir (``HALI_DATA_DIR``, e.g. an NFS mount at
the same path everywhere), and read slides at the path the enqueuer gave. A region job writes its part
(:mod:`preprocess.stages`) and marks it done in :class:`PreprocessProgress`; the job that completes the last
region enqueues the merge+import job, which runs :func:`preprocess.run.run_preprocess` (every part already on
disk, so it only merges, writes tile images and imports the tiles Label Studio lacks).

Job ids are deterministic (slide id, recipe key, region id), so enqueueing a slide twice adds nothing: a
region whose part is on disk, or whose job is queued, or running under a live lease, is left alone; a job
that failed, or whose worker died (its lease ran out), is enqueued again under the same id.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import JobStatus

from adapters.errors import SlideError
from adapters.label_studio import LabelStudioGateway
from adapters.slide_reader import OpenSlideReader
from preprocess.layout import DataLayout
from preprocess.queue.progress import PreprocessProgress
from preprocess.run import run_preprocess
from preprocess.settings import PreprocessSettings
from preprocess.stages import plan_slide, process_region, recipe_key

log = logging.getLogger(__name__)

_WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
# Settings a job takes from the enqueuer rather than its own environment: what decides the cells, and where
# they go in Label Studio. Paths (data dir, files root) and credentials come from each worker's environment.
_JOB_FIELDS = ("cells_per_task", "task_mode", "focus_cells", "tile_min_px", "mark", "classes", "backend_url",
               "featurizer", "encoder", "encoder_input_px", "checkpoint", "segmenter", "segmenter_weights", "patch_um",
               "mpp", "window_px", "region_windows", "max_blur")


@dataclass(frozen=True)
class EnqueueReport:
    """What enqueueing one slide did."""

    slide_id: str
    n_regions: int
    n_done: int
    n_enqueued: int
    merge: str


def job_settings(settings: PreprocessSettings) -> dict[str, Any]:
    """The settings a queued job rebuilds with ``PreprocessSettings(**job_settings(s))``: JSON values."""
    return settings.model_dump(mode="json", include=set(_JOB_FIELDS))


def enqueue_slide(queue: Queue, progress: PreprocessProgress, slide_path: Path, project: str,
                  settings: PreprocessSettings) -> EnqueueReport:
    """Enqueue the regions of ``slide_path`` that have no part and no live job, or the merge when none is left."""
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    with OpenSlideReader(slide_path, mpp=settings.mpp) as reader:
        reader.require_mpp()
        plan = plan_slide(reader, settings, layout)
    key, missing = recipe_key(settings), plan.missing()
    progress.start(plan.slide_id, str(slide_path.resolve()), project, key, len(plan.regions),
                   [r.region_id for r in plan.regions if r.region_id not in set(missing)])
    args = (str(slide_path.resolve()), plan.slide_id)
    n_enqueued = 0
    for region_id in missing:
        job_id = f"hali-pp-{plan.slide_id}-{key}-{region_id}"
        if _needs_enqueue(queue, progress, job_id):
            queue.enqueue(region_job, *args, region_id, job_settings(settings), job_id=job_id,
                          job_timeout=settings.job_timeout_s, result_ttl=86400, failure_ttl=7 * 86400,
                          description=f"preprocess slide {plan.slide_id} region {region_id}")
            n_enqueued += 1
    if not missing:
        _enqueue_merge(queue, progress, *args, project, job_settings(settings), settings)
    elif progress.merge_state(plan.slide_id) not in ("queued", "running"):
        progress.set_merge(plan.slide_id, "waiting")
    log.info("slide %s: %d regions, %d done, %d enqueued", plan.slide_id, len(plan.regions),
             len(plan.regions) - len(missing), n_enqueued)
    return EnqueueReport(plan.slide_id, len(plan.regions), len(plan.regions) - len(missing), n_enqueued,
                         progress.merge_state(plan.slide_id))


def region_job(slide_path: str, slide_id: str, region_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """rq job: segment and embed one region of a slide into its part; the last region enqueues the merge."""
    settings = PreprocessSettings(**overrides, progress=False)
    redis = Redis.from_url(settings.redis_url)
    progress = PreprocessProgress(redis)
    job_name = f"{slide_id}-{recipe_key(settings)}-{region_id}"
    try:
        with progress.lease(job_name, settings.preprocess_lease_s) as held:
            if not held:
                log.info("slide %s region %s: another worker is on it; skipping", slide_id, region_id)
                return {"region_id": region_id, "skipped": "running elsewhere"}
            plan, stats = _process(slide_path, slide_id, region_id, settings)
    except Exception as exc:  # a job is a process edge: record the error for --status, then let rq fail it
        progress.region_failed(slide_id, region_id, f"{type(exc).__name__}: {exc}")
        raise
    done, total = progress.region_done(slide_id, region_id)
    if done >= total and not plan.missing():
        project = progress.status(slide_id).project
        _enqueue_merge(Queue(settings.preprocess_queue_name, connection=redis), progress, slide_path, slide_id,
                       project, overrides, settings)
    return asdict(stats)


def merge_job(slide_path: str, slide_id: str, project: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """rq job: merge the slide's parts, write its tile images and import new tiles into ``project``."""
    settings = PreprocessSettings(**overrides, progress=False)
    progress = PreprocessProgress(Redis.from_url(settings.redis_url))
    with progress.lease(f"{slide_id}-merge", settings.preprocess_lease_s) as held:
        if not held:
            return {"slide_id": slide_id, "skipped": "merge running elsewhere"}
        progress.set_merge(slide_id, "running")
        try:
            gateway = LabelStudioGateway.connect(settings.ls_url, settings.ls_api_key.get_secret_value(),
                                                 timeout_s=settings.ls_timeout_s, retry=settings.retry_policy(),
                                                 batch_size=settings.ls_import_batch_size)
            result = run_preprocess(Path(slide_path), project, settings, gateway)
        except Exception as exc:  # process edge, as in region_job
            progress.set_merge(slide_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
    progress.set_merge(slide_id, "done", f"{result.n_cells} cells, {result.n_tiles} tasks, {result.n_imported} "
                                         f"new in project {result.project_id}")
    return asdict(result)


def _process(slide_path: str, slide_id: str, region_id: str, settings: PreprocessSettings):
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    with OpenSlideReader(slide_path, mpp=settings.mpp) as reader:
        if reader.slide_id != slide_id:
            raise SlideError(f"slide {slide_path} changed since it was enqueued (id {reader.slide_id}, not "
                             f"{slide_id}); run `hali preprocess --queue` on it again")
        plan = plan_slide(reader, settings, layout)
        return plan, process_region(reader, plan, plan.region(region_id), settings)


def _enqueue_merge(queue: Queue, progress: PreprocessProgress, slide_path: str, slide_id: str, project: str,
                   overrides: dict[str, Any], settings: PreprocessSettings) -> None:
    digest = hashlib.sha1(f"{project}\n{sorted(overrides.items())}".encode()).hexdigest()[:12]
    job_id = f"hali-pp-{slide_id}-merge-{digest}"
    # Two regions finishing at once both get here: the lock lets one of them look and enqueue.
    with progress.lease(f"{job_id}-enqueue", ttl_s=30) as held:
        if held and _needs_enqueue(queue, progress, job_id, lease_name=f"{slide_id}-merge"):
            queue.enqueue(merge_job, slide_path, slide_id, project, overrides, job_id=job_id,
                          job_timeout=4 * settings.job_timeout_s, result_ttl=86400, failure_ttl=7 * 86400,
                          description=f"merge and import slide {slide_id} into {project!r}")
            progress.set_merge(slide_id, "queued")
            log.info("slide %s: every region done; merge queued as job %s", slide_id, job_id)


def _needs_enqueue(queue: Queue, progress: PreprocessProgress, job_id: str, lease_name: str | None = None) -> bool:
    """True when ``job_id`` is not waiting in the queue nor running under a live lease (a stale or lost job is
    deleted)."""
    job = queue.fetch_job(job_id)
    if job is None:
        return True
    status = job.get_status()
    # A worker killed between taking the job off the queue and marking it started leaves it "queued" but in
    # no queue: it would never run, so it counts as lost.
    lost = status == JobStatus.QUEUED and queue.get_job_position(job) is None
    if status in _WAITING and not lost:
        return False
    lease = lease_name or job_id.removeprefix("hali-pp-")
    if status == JobStatus.STARTED and progress.lease_alive(lease):
        return False
    job.delete()
    return True
