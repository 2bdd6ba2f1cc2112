"""What a task shows a pathologist: cells per task, image sizes, cells visible, and how much marks pile up.

    .venv/bin/python bench/bench_tasks.py [--slide ../shared/data/wsi/CMU-1-Small-Region.svs]
        [--consep ../shared/data/consep_patches] [--cache .state/bench-tasks]

Inputs: the demo slide (20x, 0.5 um/px), segmented once by the classical segmenter as ``hali preprocess`` does
(cells cached under ``--cache``), and a CoNSeP-like 40x slide: the 432 train patches (256 px at 0.25 um/px)
laid side by side on a grid, with each nucleus' box from its instance map (the reference segmentation).

Geometries compared (all at ``tile_mpp`` 0.5 um/px):
  before   the old rule: grid squares of about 20 cells, never split; image = cells' bounding box + margin
  tile     HALI_TASK_MODE=tile: squares split above 1.5x the target; image >= 256 px, centred, shifted inside
  focused  HALI_TASK_MODE=focused: 10 marked cells per task in a window showing about 20 cells of context

Marks: share of boxes whose IoU with some neighbour exceeds 0.1 (or whose centre lies inside a neighbour's
box: a click there may pick the wrong cell), for the segmenter's boxes, boxes shrunk to 60 % around the
centre, and keypoints as ``label_config`` draws them (a dot of radius ``KEYPOINT_WIDTH`` % of the image width).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess.settings import PreprocessSettings  # noqa: E402
from preprocess.tiles.images import fit_tiles, tile_downsample  # noqa: E402
from preprocess.tiles.regions import RegionCells, build_cell_table  # noqa: E402
from label_config.regions import KEYPOINT_WIDTH  # noqa: E402
from preprocess.tiles.tasks import build_tiles  # noqa: E402

DATA = REPO.parent / "shared" / "data"
PANEL_PX = 600  # side Label Studio 1.23 gives a square image on a 1280 x 800 window (docs/img/tasks-*.png)


class _Names:
    def task_uri(self, key: str) -> str:
        return key


def segment_demo(slide: Path, cache: Path) -> tuple[RegionCells, tuple[int, int], float]:
    """The demo slide's cells (level-0), its size and mpp; segmented once, then read from ``cache``."""
    from adapters.slide_reader import OpenSlideReader
    from preprocess.layout import DataLayout
    from preprocess.stages import merge_parts, pick_segmenter, plan_slide, process_region

    with OpenSlideReader(slide) as reader:
        wh, mpp = reader.dimensions, reader.mpp
        path = cache / f"{reader.slide_id}-cells.npz"
        if path.exists():
            with np.load(path) as z:
                return RegionCells(z["xy"], z["boxes"], np.zeros((len(z["xy"]), 1))), wh, mpp
        settings = PreprocessSettings(data_dir=cache / "data", ls_files_root=cache / "files",
                                      featurizer="handcrafted", progress=False)
        plan = plan_slide(reader, settings, DataLayout(settings.data_dir, settings.ls_files_root))
        for region in plan.regions:
            process_region(reader, plan, region, settings, segment=pick_segmenter(settings))
        cells = merge_parts(reader, plan)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, xy=cells.centroids_xy, boxes=cells.boxes)
    return cells, wh, mpp


def stitched_consep(root: Path) -> tuple[RegionCells, tuple[int, int], float]:
    """The train patches side by side (21 a row), nuclei boxes from the instance maps; 0.25 um/px."""
    with np.load(root / "inst_maps_train.npz") as z:
        names, inst = z["names"], z["inst"]
    per_row, side = 21, inst.shape[1]
    xy, boxes = [], []
    for k in range(len(names)):
        ox, oy = (k % per_row) * side, (k // per_row) * side
        labels = inst[k]
        ids = np.unique(labels)[1:]
        rows, cols = np.nonzero(labels)
        lab = labels[rows, cols]
        for i in ids:
            sel = lab == i
            r, c = rows[sel], cols[sel]
            xy.append((ox + c.mean(), oy + r.mean()))
            boxes.append((ox + c.min(), oy + r.min(), c.max() - c.min() + 1, r.max() - r.min() + 1))
    xy, boxes = np.array(xy), np.array(boxes)
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    n_rows = -(-len(names) // per_row)
    return RegionCells(xy[order], boxes[order], np.zeros((len(xy), 1))), (per_row * side, n_rows * side), 0.25


def tasks_for(cells: RegionCells, wh, mpp, mode: str):
    s = PreprocessSettings(task_mode="focused" if mode == "focused" else "tile")
    if mode == "before":
        from preprocess.tiles import tiling
        plan_before = tiling.plan_tiles(cells.centroids_xy, s.cells_per_task, max_cells=10**9)
        ids = np.array([f"t{c}-{r}" for c, r in plan_before.grid])[plan_before.tile_index]
        tiles = build_tiles("s", [str(i) for i in range(len(cells))], ids, cells.boxes, wh, mpp,
                            lambda *_: "", min_px=0)
    else:
        from preprocess.run import make_tasks
        _, tiles = make_tasks("s", cells, wh, mpp, s, lambda *_: "")
    return fit_tiles(tiles, mpp, s.tile_mpp, _Names())


def describe(name: str, cells: RegionCells, tiles) -> str:
    marked = np.array([len(t.cells) for t in tiles])
    side = np.array([min(t.width, t.height) for t in tiles])
    xy = cells.centroids_xy
    visible = np.array([((xy[:, 0] >= t.x0) & (xy[:, 0] < t.x0 + t.width * t.downsample)
                         & (xy[:, 1] >= t.y0) & (xy[:, 1] < t.y0 + t.height * t.downsample)).sum() for t in tiles])
    zoom = PANEL_PX / np.array([max(t.width, t.height) for t in tiles])
    q = lambda a: f"{a.min()}/{int(np.percentile(a, 10))}/{int(np.median(a))}/{int(np.percentile(a, 90))}/{a.max()}"
    return (f"| {name} | {len(tiles)} | {q(marked)} | {q(side)} | {np.median(visible):.0f} | "
            f"{np.median(zoom):.1f}x |")


def overlap_shares(boxes: np.ndarray, xy: np.ndarray, image_px: float, downsample: float) -> dict:
    """Share of marks that collide with a neighbour's: IoU > 0.1, or centre inside a neighbour's box."""
    from scipy.spatial import cKDTree

    b = boxes.astype(np.float64)
    reach = float(np.max(b[:, 2:])) * 1.5
    pairs = cKDTree(xy).query_pairs(reach, output_type="ndarray")
    out = {}
    for name, scale in (("boxes", 1.0), ("boxes at 60 %", 0.6)):
        wh = b[:, 2:] * scale
        lo = xy - wh / 2 if scale != 1.0 else b[:, :2]
        hi = lo + wh
        i, j = pairs[:, 0], pairs[:, 1]
        inter = np.prod(np.clip(np.minimum(hi[i], hi[j]) - np.maximum(lo[i], lo[j]), 0, None), axis=1)
        iou = inter / (np.prod(wh[i], axis=1) + np.prod(wh[j], axis=1) - inter)
        inside = (np.all((xy[i] >= lo[j]) & (xy[i] < hi[j]), axis=1) | np.all((xy[j] >= lo[i]) & (xy[j] < hi[i]), axis=1))
        hit = np.zeros(len(xy), bool)
        hit[i[iou > 0.1]] = hit[j[iou > 0.1]] = True
        click = np.zeros(len(xy), bool)
        click[i[inside]] = click[j[inside]] = True
        out[name] = (hit.mean(), click.mean())
    # Dots touch when centroids are closer than one dot diameter (a share of the image's width).
    dot = 2 * KEYPOINT_WIDTH / 100 * image_px * downsample  # level-0 px
    d, _ = cKDTree(xy).query(xy, k=2)
    near = d[:, 1] < dot
    out[f"keypoints ({dot / downsample:.1f} px dots on a {image_px:.0f} px image)"] = (near.mean(), near.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=DATA / "wsi" / "CMU-1-Small-Region.svs")
    parser.add_argument("--consep", type=Path, default=DATA / "consep_patches")
    parser.add_argument("--cache", type=Path, default=REPO / ".state" / "bench-tasks")
    args = parser.parse_args()
    inputs = {"demo slide (CMU-1-Small-Region, 20x)": segment_demo(args.slide, args.cache),
              "stitched CoNSeP train patches (40x)": stitched_consep(args.consep)}
    for title, (cells, wh, mpp) in inputs.items():
        print(f"\n### {title}: {len(cells)} cells, {wh[0]} x {wh[1]} px at {mpp} um/px\n")
        print("| geometry | tasks | marked cells per task (min/p10/median/p90/max) | image side px (min/p10/median/p90/max) "
              "| cells visible (median) | zoom to fill 600 px |")
        print("|---|---|---|---|---|---|")
        sides = {}
        for mode in ("before", "tile", "focused"):
            tiles = tasks_for(cells, wh, mpp, mode)
            print(describe(mode, cells, tiles))
            sides[mode] = float(np.median([max(t.width, t.height) for t in tiles]))
        ds = tile_downsample(mpp, 0.5)
        print("\n| marks | IoU > 0.1 with a neighbour | centre inside a neighbour's mark |\n|---|---|---|")
        for name, (iou, click) in overlap_shares(cells.boxes, cells.centroids_xy, sides["tile"], ds).items():
            print(f"| {name} | {iou:.1%} | {click:.1%} |")


if __name__ == "__main__":
    main()
