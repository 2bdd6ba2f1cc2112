"""The stages of preprocessing one slide at any size: plan regions, process each region, merge.

Both the local ``hali preprocess`` and the queued region jobs (``preprocess.queue.jobs``) call these,
so a slide is cut, segmented and embedded the same way in one process or on many machines::

    <data_dir>/slides/<slide_id>/parts/<recipe key>/plan.npz         tissue mask the regions come from
    <data_dir>/slides/<slide_id>/parts/<recipe key>/<region id>.npz  one region's cells and embeddings

The recipe key is a hash of everything that decides a region's cells (:func:`part_recipe`), so a part made
with other settings is never reused, and a part already on disk is never made again: a killed run loses
only the regions it was working on. Part files are written atomically (temporary file, then ``os.replace``),
and every read and write of them goes through :func:`_save_part`, :func:`_load_part` and :func:`_part_done`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters.atomic import write_atomic
from adapters.errors import SlideError
from adapters.slide_reader import OpenSlideReader
from preprocess.errors import PreprocessError, SegmentationError
from preprocess.features.cellnet import DEFAULT_WEIGHTS as DEFAULT_CELLNET_WEIGHTS
from preprocess.features.cellnet import weights_digest
from preprocess.features.featurize import Featurizer, cell_patch_px, extract_patches, make_featurizer, patch_um_of
from preprocess.layout import DataLayout
from preprocess.nuclei.focus import focus_checked
from preprocess.nuclei.learned import segment_nuclei_learned
from preprocess.nuclei.segment import Nuclei, segment_nuclei, segment_windows, tissue_windows
from preprocess.nuclei.stain import Stain, detect_stain
from preprocess.nuclei.tissue import detect_tissue
from preprocess.settings import PreprocessSettings
from preprocess.tiles.regions import Region, RegionCells, merge_region_cells, plan_regions

log = logging.getLogger(__name__)

Segmenter = Callable[[np.ndarray, float], Nuclei]  # (uint8 RGB (rows, cols, 3), mpp) -> nuclei in its pixels

THUMBNAIL_PX = 2048
_EMBED_CHUNK = 2048  # patches embedded at a time: bounds memory in a dense region


def make_featurizer_from(settings: PreprocessSettings) -> Featurizer:
    """The featurizer ``settings`` name (``HALI_FEATURIZER``, its checkpoint, encoder and device)."""
    return make_featurizer(settings.featurizer, settings.checkpoint, settings.device, settings.patch_um,
                           settings.encoder, settings.encoder_input_px)


def recipe(settings: PreprocessSettings) -> dict:
    """Everything that decides the cells, tiles and embeddings: a cached table made otherwise is redone."""
    return {"cells_per_task": settings.cells_per_task, **part_recipe(settings)}


def part_recipe(settings: PreprocessSettings) -> dict:
    """Everything that decides one region's cells and embeddings (the tiling at merge time aside)."""
    return {"featurizer": settings.featurizer, "checkpoint": str(settings.checkpoint or ""),
            **({"encoder": settings.encoder, "encoder_input_px": settings.encoder_input_px}
               if settings.featurizer == "encoder" else {}),
            **({"cellnet_weights": weights_digest(settings.checkpoint or DEFAULT_CELLNET_WEIGHTS)}
               if settings.featurizer == "cellnet" else {}),
            "segmenter_weights": str(settings.segmenter_weights or ""), "segmenter": settings.segmenter,
            **({"max_blur": settings.max_blur} if settings.max_blur < 1.0 else {}),
            "patch_um": settings.patch_um,
            "mpp": settings.mpp, "window_px": settings.window_px, "region_windows": settings.region_windows}


def recipe_key(settings: PreprocessSettings) -> str:
    """12 hex characters naming :func:`part_recipe`: the folder of the slide's parts."""
    return hashlib.sha1(json.dumps(part_recipe(settings), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """How one slide is cut into regions.

    ``tissue_mask``: bool (rows, cols) over the thumbnail, each pixel ``mask_downsample`` level-0 px a side.
    ``regions``: in reading order of the region grid. ``parts_dir``: where the region parts go.
    ``stain``: ``"he"`` or ``"ihc"``, read off the thumbnail.
    """

    slide_id: str
    tissue_mask: np.ndarray
    mask_downsample: float
    regions: tuple[Region, ...]
    parts_dir: Path
    stain: Stain = "he"  # from the thumbnail (preprocess.nuclei.stain): picks the segmenter under "auto"

    def region(self, region_id: str) -> Region:
        """The region named ``region_id``; :class:`PreprocessError` if the slide has none of that name."""
        for region in self.regions:
            if region.region_id == region_id:
                return region
        raise PreprocessError(f"slide {self.slide_id} has no region {region_id!r}; re-run `hali preprocess --queue`")

    def part_path(self, region_id: str) -> Path:
        return self.parts_dir / f"{region_id}.npz"

    def missing(self) -> list[str]:
        """Ids of the regions whose part is not written yet."""
        return [r.region_id for r in self.regions if not _part_done(self.part_path(r.region_id))]


@dataclass(frozen=True)
class RegionStats:
    """What processing one region did: cells found, level-0 pixels segmented, seconds per step."""

    region_id: str
    n_cells: int
    area_px: int
    segment_s: float
    embed_s: float
    skipped: bool


def plan_slide(reader: OpenSlideReader, settings: PreprocessSettings, layout: DataLayout) -> SlidePlan:
    """The slide's regions, from the tissue mask saved beside its parts (made and saved when missing)."""
    parts_dir = layout.slide_dir(reader.slide_id) / "parts" / recipe_key(settings)
    plan_path = parts_dir / "plan.npz"
    saved = _load_part(plan_path) if _part_done(plan_path) else {}
    if "stain" in saved:
        mask, downsample, stain = saved["tissue_mask"], float(saved["mask_downsample"]), str(saved["stain"])
    else:
        thumb, downsample = reader.thumbnail(THUMBNAIL_PX)
        mask = detect_tissue(thumb)
        stain = detect_stain(thumb, mask)
        _save_part(plan_path, {"tissue_mask": mask, "mask_downsample": np.float64(downsample), "stain": np.str_(stain)})
    if not mask.any():
        raise SlideError(f"slide {reader.path} shows no tissue (blank or all background); check the file")
    windows = tissue_windows(mask, downsample, reader.dimensions, settings.window_px)
    regions = plan_regions(windows, settings.window_px, settings.region_windows)
    return SlidePlan(reader.slide_id, mask, downsample, tuple(regions), parts_dir, stain)


def process_region(
    reader: OpenSlideReader, plan: SlidePlan, region: Region, settings: PreprocessSettings,
    featurizer: Featurizer | None = None, segment: Segmenter | None = None,
) -> RegionStats:
    """Segment, cut patches and embed the cells of ``region``, and write its part; skip a part on disk.

    ``featurizer`` and ``segment`` default to the ones ``settings`` names (pass them to build them once).
    """
    path = plan.part_path(region.region_id)
    if _part_done(path):
        return RegionStats(region.region_id, 0, region.area_px, 0.0, 0.0, skipped=True)
    t0 = time.perf_counter()
    nuclei = segment_windows(reader, list(region.windows), plan.tissue_mask, plan.mask_downsample,
                             segment=segment or pick_segmenter(settings, plan.stain))
    t1 = time.perf_counter()
    featurizer = featurizer or make_featurizer_from(settings)
    patch_px = cell_patch_px(reader.require_mpp(), patch_um_of(featurizer, settings.patch_um))
    features = embed_cells(reader, featurizer, nuclei.centroids_xy, patch_px)
    _save_part(path, {"centroids_xy": nuclei.centroids_xy, "boxes": nuclei.boxes, "features": features})
    stats = RegionStats(region.region_id, len(nuclei), region.area_px, t1 - t0, time.perf_counter() - t1, False)
    log.info("slide %s: region %s: %d cells (segment %.1f s, embed %.1f s)", plan.slide_id, region.region_id,
             stats.n_cells, stats.segment_s, stats.embed_s)
    return stats


def embed_cells(
    reader: OpenSlideReader, featurizer: Featurizer, centroids_xy: np.ndarray, patch_px: int
) -> np.ndarray:
    """float32 (N, D) embeddings of the patches around level-0 ``centroids_xy`` (float (N, 2)), cut and
    embedded :data:`_EMBED_CHUNK` cells at a time so at most that many patches are in memory."""
    parts = [featurizer.embed(extract_patches(reader, centroids_xy[i : i + _EMBED_CHUNK], patch_px,
                                              featurizer.patch_out_px))
             for i in range(0, len(centroids_xy), _EMBED_CHUNK)]
    if not parts:
        return np.zeros((0, featurizer.dim), np.float32)
    return np.concatenate(parts).astype(np.float32)


def merge_parts(reader: OpenSlideReader, plan: SlidePlan) -> RegionCells:
    """Every cell of the slide, from its region parts, sorted by (y, x) as a single pass gives them.

    :class:`PreprocessError` naming the regions whose part is missing; :class:`SegmentationError` when the
    slide has no nuclei at all.
    """
    missing = plan.missing()
    if missing:
        raise PreprocessError(
            f"slide {plan.slide_id}: {len(missing)} of {len(plan.regions)} regions are not processed yet "
            f"({', '.join(missing[:5])}); run `hali worker` or re-run `hali preprocess --queue` to finish them"
        )
    cells = merge_region_cells([RegionCells(**_load_part(plan.part_path(r.region_id))) for r in plan.regions])
    if len(cells) == 0:
        raise SegmentationError(f"no nuclei found in slide {reader.path}; is it a stained tissue section?")
    return cells


def pick_segmenter(settings: PreprocessSettings, stain: Stain = "he") -> Segmenter:
    """HoVer-Net when the settings name its weights; else ``HALI_SEGMENTER``: the learned segmenter (H&E),
    the classical one, or under ``auto`` the learned one on H&E and the classical one on IHC (``stain``).
    Nuclei in out-of-focus blocks (``HALI_MAX_BLUR``) are left out whichever segments."""
    return focus_checked(_segmenter(settings, stain), settings.max_blur)


def _segmenter(settings: PreprocessSettings, stain: Stain) -> Segmenter:
    if settings.segmenter_weights is not None:
        from preprocess.nuclei.hovernet import HoVerNetSegmenter  # torch and weights only when asked for

        return HoVerNetSegmenter(settings.segmenter_weights, device=settings.segmenter_device).segment_nuclei
    if settings.segmenter == "classical" or (settings.segmenter == "auto" and stain == "ihc"):
        return segment_nuclei
    return segment_nuclei_learned


def _save_part(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz) atomically: a reader, or a run killed midway, sees all or nothing."""
    write_atomic(path, lambda fh: np.savez(fh, **arrays))


def _load_part(path: Path) -> dict[str, np.ndarray]:
    """The arrays :func:`_save_part` wrote to ``path``."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _part_done(path: Path) -> bool:
    """Whether the part at ``path`` is written (it only ever appears whole)."""
    return path.is_file()
