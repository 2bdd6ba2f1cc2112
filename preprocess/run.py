"""``run_preprocess``: one slide in, one Label Studio project with pre-drawn cell boxes out.

Steps (each logged with the slide id): read the slide, find tissue and cut it into regions of a few windows,
then region by region segment nuclei, embed each cell's patch and save the region's part (so memory stays
bounded and a killed run resumes where it stopped, see :mod:`preprocess.stages`); merge the parts, group
cells into tasks (:func:`make_tasks`: ``HALI_TASK_MODE`` tile or focused) shown in windows of at least
``tile_min_px`` px, write tile PNGs at ``tile_mpp`` um/px to the output storage (Label Studio's local-files
root, or S3), and import the tiles not yet in the project. Re-running on the same slide
and project reuses the cell table (keyed by the slide's content hash and the recipe), skips tile images
already stored, and imports nothing twice. Queued region jobs on many workers (``hali preprocess --queue``)
write the same parts, and their last step calls :func:`run_preprocess` too.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from adapters.errors import LabelStudioError
from adapters.label_studio import LabelStudioGateway
from adapters.slide_reader import OpenSlideReader
from adapters.storage import OutputStorage, S3Access, Storage, open_output_storage
from label_config import (
    Mark,
    TileTask,
    build_label_config,
    parse_classes,
    parse_label_set,
    parse_mark,
    parse_version_name,
    version_name,
)
from preprocess.layout import (
    DataLayout,
    cells_key,
    read_cell_table,
    read_slide_meta,
    tasks_key,
    write_cell_table,
    write_slide_meta,
    write_task_map,
)
from preprocess.settings import PreprocessSettings
from preprocess.stages import (
    SlidePlan,
    make_featurizer_from,
    merge_parts,
    pick_segmenter,
    plan_slide,
    process_region,
    recipe,
)
from preprocess.tiles.cells import CellTable
from preprocess.tiles.images import fit_tiles, tile_downsample, write_tile_images
from preprocess.tiles.regions import RegionCells, build_cell_table
from preprocess.tiles.tasks import build_tiles, task_payloads
from preprocess.tiles.tiling import choose_tile_side

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessResult:
    slide_id: str
    project_id: int
    project_url: str
    n_cells: int
    n_tiles: int
    n_imported: int
    seconds: dict[str, float]


def run_preprocess(
    slide_path: Path, project_title: str, settings: PreprocessSettings, gateway: LabelStudioGateway,
    storage: OutputStorage | None = None,
) -> PreprocessResult:
    """Preprocess ``slide_path`` into the project titled ``project_title`` (created when missing).

    ``storage``: where tiles and tables go; by default built from ``settings`` (``HALI_STORAGE_URL``).
    """
    layout = DataLayout(settings.data_dir, settings.ls_files_root)
    storage = storage or open_output_storage(settings.storage_url, settings.data_dir, settings.ls_files_root,
                                             settings.s3_endpoint_url)
    storage.check()  # fail fast on bad S3 credentials or a missing bucket
    timer = _Timer()
    project = ensure_project(gateway, project_title, settings.class_list(), settings.mark)  # fail fast: LS down
    _attach_tile_storage(gateway, project.id, layout, storage, settings.s3_presign)  # and if LS cannot read S3
    if settings.overlap_share > 0:
        gateway.set_overlap(project.id, settings.overlap_readers, settings.overlap_share)
    with OpenSlideReader(slide_path, mpp=settings.mpp) as reader:
        tiles, n_cells = _load_or_make_tiles(reader, settings, layout, timer, storage)
        with timer("tile images"):
            write_tile_images(reader, tiles, storage.tiles, settings.progress)
    with timer("import"):
        n_new = _import_new_tiles(gateway, project, tiles, storage.tables)
    if settings.backend_url:
        gateway.connect_backend(project.id, settings.backend_url, **backend_credentials(settings))
    slide_id = tiles[0].slide_id
    log.info("slide %s: %d cells in %d tiles, %d new tasks in project %s (%s)", slide_id, n_cells,
             len(tiles), n_new, project.id, timer.summary())
    return PreprocessResult(slide_id, project.id, gateway.project_url(project.id), n_cells, len(tiles), n_new,
                            dict(timer.seconds))


def ensure_project(gateway: LabelStudioGateway, title: str, classes: list[str], mark: Mark = "rectangle"):
    """The project titled ``title``, created with ``classes`` and cells marked by ``mark`` when missing;
    :class:`LabelStudioError` when it exists with other classes or another mark."""
    project = gateway.find_project(title)
    if project is None:
        return gateway.create_project(title, build_label_config(classes, mark))
    existing = parse_classes(project.label_config)
    if existing != classes:
        raise LabelStudioError(
            f"project {title!r} already exists with classes {existing}, not {classes}; "
            f"pass --classes {','.join(existing)} or choose another --project name"
        )
    if parse_mark(project.label_config) != mark:
        raise LabelStudioError(
            f"project {title!r} already marks cells with {parse_mark(project.label_config)!r}, not {mark!r}; "
            f"pass --mark {parse_mark(project.label_config)} or choose another --project name"
        )
    return project


def _load_or_make_tiles(reader: OpenSlideReader, settings: PreprocessSettings, layout: DataLayout, timer,
                        storage: OutputStorage):
    slide_id, tables = reader.slide_id, storage.tables
    where = tables.location(cells_key(slide_id))
    made_with = {**recipe(settings), **task_shape(settings)}
    if tables.exists(cells_key(slide_id)) and tables.exists(tasks_key(slide_id)):
        meta = read_slide_meta(tables, slide_id)
        if meta.get("recipe") == made_with:
            log.info("slide %s: reusing %s (already preprocessed with these settings)", slide_id, where)
            return [TileTask.from_task_data(d) for d in meta["tiles"]], len(read_cell_table(tables, slide_id))
        log.info("slide %s: settings changed since %s was made; preprocessing again", slide_id, where)
    with timer("tissue"):
        plan = plan_slide(reader, settings, layout)
    _process_regions(reader, plan, settings, timer)
    with timer("merge"):
        table, tiles = make_tasks(slide_id, merge_parts(reader, plan), reader.dimensions, reader.mpp, settings,
                                  layout.tile_url)
        tiles = fit_tiles(tiles, reader.mpp, settings.tile_mpp, storage.tiles)
    write_cell_table(tables, slide_id, table)
    meta = {"slide_path": str(Path(reader.path).resolve()), "slide_id": slide_id, "mpp": reader.mpp,
            "recipe": made_with, "featurizer": settings.featurizer, "tiles": [t.to_task_data() for t in tiles]}
    write_slide_meta(tables, slide_id, meta)
    return tiles, len(table)


def task_shape(settings: PreprocessSettings) -> dict:
    """The settings that decide how cells group into tasks and what each task image shows."""
    return {"tile_mpp": settings.tile_mpp, "task_mode": settings.task_mode, "tile_min_px": settings.tile_min_px,
            "mark": settings.mark, **({"focus_cells": settings.focus_cells} if settings.task_mode == "focused" else {})}


def make_tasks(slide_id: str, cells: RegionCells, slide_wh: tuple[int, int], mpp: float | None,
               settings: PreprocessSettings, image_url) -> tuple[CellTable, list[TileTask]]:
    """The cell table (cells grouped into tasks) and the tasks' tiles at level-0 size (before ``fit_tiles``).

    Tile mode: groups of about ``cells_per_task`` cells, every one marked. Focused mode: groups of about
    ``focus_cells`` cells, each shown in a window wide enough for about ``cells_per_task`` cells of context
    (the side of the grid squares that hold that many on average). Either way each image is at least
    ``tile_min_px`` tile pixels a side, and each cell is in exactly one task.
    """
    focused = settings.task_mode == "focused"
    group = settings.focus_cells if focused else settings.cells_per_task
    table = build_cell_table(slide_id, cells, group, focused=focused)
    context = choose_tile_side(cells.centroids_xy, settings.cells_per_task) if focused else 0.0
    tiles = build_tiles(slide_id, table.cell_ids, table.tile_ids, table.boxes, slide_wh, mpp, image_url,
                        min_px=settings.tile_min_px, downsample=tile_downsample(mpp, settings.tile_mpp),
                        context_side=context)
    return table, [replace(t, mark=settings.mark) for t in tiles]


def _process_regions(reader: OpenSlideReader, plan: SlidePlan, settings: PreprocessSettings, timer) -> None:
    """Every region whose part is missing, one at a time (the featurizer and segmenter built once)."""
    missing = set(plan.missing())
    if not missing:
        return
    featurizer = make_featurizer_from(settings)
    segment = pick_segmenter(settings, plan.stain)
    log.info("slide %s: %d of %d regions to process (%s stain, segmenter %s)", plan.slide_id, len(missing),
             len(plan.regions), plan.stain, getattr(segment, "__qualname__", segment))
    todo = [r for r in plan.regions if r.region_id in missing]
    bar = tqdm(todo, desc="regions", unit="region", disable=not settings.progress, total=len(plan.regions),
               initial=len(plan.regions) - len(todo))
    for region in bar:
        stats = process_region(reader, plan, region, settings, featurizer, segment)
        timer.add("segmentation", stats.segment_s)
        timer.add("embedding", stats.embed_s)
    left_out = getattr(segment, "left_out", 0)
    if left_out:
        log.warning("slide %s: %d nuclei in out-of-focus tissue were left out (blur above %.2f); rescan the slide, "
                    "or set HALI_MAX_BLUR=1 to keep them", plan.slide_id, left_out, settings.max_blur)


def _import_new_tiles(gateway: LabelStudioGateway, project, tiles: list[TileTask], tables: Storage) -> int:
    """Import the tiles not in the project yet, and record which task shows each tile of the slide (the task
    map the backend reads instead of listing every task)."""
    known = gateway.task_ids_by_key(project.id, "tile_id")
    new = [t for t in tiles if t.tile_id not in known]
    task_ids = {t.tile_id: known[t.tile_id] for t in tiles if t.tile_id in known}
    if new:
        # New tiles join the version the project serves now, after its ranked tasks, until the next retrain.
        current = parse_version_name(project.model_version)
        version = version_name(current if current is not None else 0)
        neutral = parse_label_set(project.label_config).neutral  # "Unclassified" in projects made before it
        ids = gateway.import_tasks(project.id, task_payloads(new, version, 1.0 if known else 0.0, neutral))
        task_ids.update(zip((t.tile_id for t in new), ids))
        if current is None:
            gateway.serve_version(project.id, version)
    if tiles:
        write_task_map(tables, project.id, tiles[0].slide_id, task_ids)
    return len(new)


def backend_credentials(settings: PreprocessSettings) -> dict:
    """How Label Studio authenticates to the backend: basic auth on every call, the secret on webhooks."""
    password, secret = settings.backend_password.get_secret_value(), settings.webhook_secret.get_secret_value()
    auth = (settings.backend_user, password) if password else None
    headers = {"X-Hali-Secret": secret} if secret else {}
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return {"auth": auth, "webhook_headers": headers or None}


def _attach_tile_storage(gateway: LabelStudioGateway, project_id: int, layout: DataLayout, storage: OutputStorage,
                         presign: bool) -> None:
    """The Label Studio storage that lets the project show the tiles: local files, or the S3 bucket."""
    s3, access = storage.s3, storage.s3_access or S3Access()
    if s3 is None:
        layout.tiles_root.mkdir(parents=True, exist_ok=True)  # Label Studio refuses a path that does not exist
        gateway.ensure_local_storage(project_id, str(layout.tiles_root))
        return
    gateway.ensure_s3_storage(  # the whole bucket: Label Studio refuses a prefix that holds no object yet
        project_id, s3.bucket, endpoint_url=access.endpoint_url, region=access.region,
        access_key_id=access.access_key_id, secret_access_key=access.secret_access_key,
        session_token=access.session_token, presign=presign,
    )


class _Timer:
    """Seconds spent per named step, for the log line and the CLI's summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
