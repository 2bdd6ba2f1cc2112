"""``run_preprocess``: one slide in, one Label Studio project with pre-drawn cell boxes out.

Steps (each logged with the slide id): read the slide, find tissue, segment nuclei window by window, cut
tiles of about ``cells_per_task`` cells, embed every cell's patch with the frozen ResNet-18, write tile
PNGs at ``tile_mpp`` um/px to the output storage (Label Studio's local-files root, or S3), and import the
tiles not yet in the project. Re-running on the same slide and project reuses the cell table (keyed by the
slide's content hash), skips tile images already stored, and imports nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from label_config import TileTask, build_label_config, parse_classes, parse_version_name, version_name
from preprocess.cells import CellTable, make_cell_id, make_tile_id
from preprocess.errors import LabelStudioError, SegmentationError, SlideError
from preprocess.featurize import ResNet18Featurizer, cell_patch_px, extract_patches, make_featurizer
from preprocess.layout import (DataLayout, cells_key, read_cell_table, read_slide_meta, tasks_key, write_cell_table,
                               write_slide_meta)
from preprocess.ls_gateway import LabelStudioGateway
from preprocess.hovernet import HoVerNetSegmenter
from preprocess.segment import segment_nuclei, segment_slide
from preprocess.settings import PreprocessSettings
from preprocess.slide import OpenSlideReader
from preprocess.storage import OutputStorage, S3Access, open_output_storage
from preprocess.tasks import build_tiles, task_payloads
from preprocess.tile_images import fit_tiles, write_tile_images
from preprocess.tiling import plan_tiles
from preprocess.tissue import detect_tissue

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
    project = _ensure_project(gateway, project_title, settings.class_list())  # fail fast if LS is down
    _attach_tile_storage(gateway, project.id, layout, storage, settings.s3_presign)  # and if LS cannot read S3
    with OpenSlideReader(slide_path, mpp=settings.mpp) as reader:
        tiles, n_cells = _load_or_make_tiles(reader, settings, layout, timer, storage)
        with timer("tile images"):
            write_tile_images(reader, tiles, storage.tiles, settings.progress)
    with timer("import"):
        n_new = _import_new_tiles(gateway, project, tiles)
    if settings.backend_url:
        gateway.connect_backend(project.id, settings.backend_url)
    slide_id = tiles[0].slide_id
    log.info("slide %s: %d cells in %d tiles, %d new tasks in project %s (%s)", slide_id, n_cells,
             len(tiles), n_new, project.id, timer.summary())
    return PreprocessResult(slide_id, project.id, gateway.project_url(project.id), n_cells, len(tiles), n_new,
                            dict(timer.seconds))


def _ensure_project(gateway: LabelStudioGateway, title: str, classes: list[str]):
    project = gateway.find_project(title)
    if project is None:
        return gateway.create_project(title, build_label_config(classes))
    existing = parse_classes(project.label_config)
    if existing != classes:
        raise LabelStudioError(
            f"project {title!r} already exists with classes {existing}, not {classes}; "
            f"pass --classes {','.join(existing)} or choose another --project name"
        )
    return project


def _load_or_make_tiles(reader: OpenSlideReader, settings: PreprocessSettings, layout: DataLayout, timer,
                        storage: OutputStorage):
    slide_id, tables = reader.slide_id, storage.tables
    where = tables.location(cells_key(slide_id))
    recipe = _recipe(settings)
    if tables.exists(cells_key(slide_id)) and tables.exists(tasks_key(slide_id)):
        meta = read_slide_meta(tables, slide_id)
        if meta.get("recipe") == recipe:
            log.info("slide %s: reusing %s (already preprocessed with these settings)", slide_id, where)
            return [TileTask.from_task_data(d) for d in meta["tiles"]], len(read_cell_table(tables, slide_id))
        log.info("slide %s: settings changed since %s was made; preprocessing again", slide_id, where)
    table, tiles = _segment_and_embed(reader, settings, layout, timer)
    tiles = fit_tiles(tiles, reader.mpp, settings.tile_mpp, storage.tiles)
    write_cell_table(tables, slide_id, table)
    meta = {"slide_path": str(Path(reader.path).resolve()), "slide_id": slide_id, "mpp": reader.mpp,
            "recipe": recipe, "featurizer": settings.featurizer, "tiles": [t.to_task_data() for t in tiles]}
    write_slide_meta(tables, slide_id, meta)
    return tiles, len(table)


def _recipe(settings: PreprocessSettings) -> dict:
    """Everything that decides the cells, tiles and embeddings: a cached table made otherwise is redone."""
    return {"cells_per_task": settings.cells_per_task, "featurizer": settings.featurizer,
            "checkpoint": str(settings.checkpoint or ""), "segmenter_weights": str(settings.segmenter_weights or ""),
            "patch_um": settings.patch_um, "mpp": settings.mpp, "tile_mpp": settings.tile_mpp}


def _segment_and_embed(reader, settings, layout, timer) -> tuple[CellTable, list[TileTask]]:
    slide_id, mpp = reader.slide_id, reader.require_mpp()
    with timer("tissue"):
        thumb, downsample = reader.thumbnail(2048)
        mask = detect_tissue(thumb)
    if not mask.any():
        raise SlideError(f"slide {reader.path} shows no tissue (blank or all background); check the file")
    with timer("segmentation"):
        nuclei = segment_slide(reader, mask, downsample, window_px=settings.window_px, progress=settings.progress,
                               segment=_pick_segmenter(settings))
    if len(nuclei.centroids_xy) == 0:
        raise SegmentationError(f"no nuclei found in slide {reader.path}; is it a stained tissue section?")
    plan = plan_tiles(nuclei.centroids_xy, settings.cells_per_task)
    cell_ids = np.array([make_cell_id(slide_id, x, y) for x, y in nuclei.centroids_xy])
    grid = plan.grid[plan.tile_index]
    tile_ids = np.array([make_tile_id(slide_id, int(c), int(r)) for c, r in grid])
    with timer("embedding"):
        featurizer = make_featurizer(settings.featurizer, settings.checkpoint, settings.device, settings.patch_um)
        patches = extract_patches(reader, nuclei.centroids_xy, cell_patch_px(mpp, settings.patch_um))
        features = _embed(featurizer, patches, settings.progress)
    order = np.argsort(plan.tile_index, kind="stable")  # tiles in reading order, cells grouped by tile
    table = CellTable(cell_ids[order], nuclei.boxes[order], tile_ids[order], features[order])
    tiles = build_tiles(slide_id, table.cell_ids, table.tile_ids, table.boxes, reader.dimensions, mpp,
                        layout.tile_url)
    return table, tiles


def _pick_segmenter(settings: PreprocessSettings):
    """The classical segmenter, or HoVer-Net when the settings name its weights."""
    if settings.segmenter_weights is None:
        return segment_nuclei
    return HoVerNetSegmenter(settings.segmenter_weights, device=settings.segmenter_device).segment_nuclei


def _embed(featurizer: ResNet18Featurizer, patches: np.ndarray, progress: bool) -> np.ndarray:
    chunk = 2048
    parts = [featurizer.embed(patches[i : i + chunk])
             for i in tqdm(range(0, len(patches), chunk), desc="embedding", unit="batch", disable=not progress)]
    return np.concatenate(parts).astype(np.float32)


def _import_new_tiles(gateway: LabelStudioGateway, project, tiles: list[TileTask]) -> int:
    known = {t["data"].get("tile_id") for t in gateway.iter_tasks(project.id)}
    new = [t for t in tiles if t.tile_id not in known]
    if not new:
        return 0
    # New tiles join the version the project serves now, after its ranked tasks, until the next retrain.
    current = parse_version_name(project.model_version)
    version = version_name(current if current is not None else 0)
    gateway.import_tasks(project.id, task_payloads(new, version, score_offset=1.0 if known else 0.0))
    if current is None:
        gateway.serve_version(project.id, version)
    return len(new)


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

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
