"""Preprocessing at slide scale: throughput, peak memory and time vs slide area, up to the merged cell table.

    .venv/bin/python bench/bench_preprocess.py [--sizes 5000,10000,20000] [--repeats 3] [--featurizer handcrafted]

Slides: ``../shared/data/wsi/CMU-1-Small-Region.svs`` and synthetic slides of each ``--sizes`` side made by
``scripts/make_big_slide.py`` (cached under ``--slides-dir``). Each run is a fresh child process with an empty
data dir that plans regions, segments and embeds every region (one process, as ``hali preprocess`` does
locally), merges the parts and saves the cell table; Label Studio import and tile images are left out.
Peak RSS is the child's ``ru_maxrss`` (``os.wait4``: the same figure ``getrusage(RUSAGE_CHILDREN)`` reports
for one child). Figures are medians over ``--repeats`` runs (one run for slides over 50 megapixels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
CMU = REPO.parent / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
BIG_SLIDE_MP = 50.0


def run_child(slide: Path, data_dir: Path, featurizer: str) -> dict:
    """Preprocess ``slide`` up to the cell table in this process; returns its figures."""
    sys.path.insert(0, str(REPO))
    from adapters.slide_reader import OpenSlideReader
    from preprocess.features.featurize import make_featurizer
    from preprocess.layout import DataLayout
    from preprocess.settings import PreprocessSettings
    from preprocess.stages import merge_parts, pick_segmenter, plan_slide, process_region
    from preprocess.tiles.regions import build_cell_table

    settings = PreprocessSettings(data_dir=data_dir, ls_files_root=data_dir / "files", featurizer=featurizer,
                                  progress=False)
    t0 = time.perf_counter()
    with OpenSlideReader(slide) as reader:
        plan = plan_slide(reader, settings, DataLayout(settings.data_dir, settings.ls_files_root))
        embedder = make_featurizer(featurizer, settings.checkpoint, settings.device, settings.patch_um)
        stats = []
        for region in plan.regions:
            stats.append(process_region(reader, plan, region, settings, embedder, pick_segmenter(settings)))
            print(f"{slide.name}: region {len(stats)}/{len(plan.regions)}, {sum(s.n_cells for s in stats)} cells, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        table = build_cell_table(reader.slide_id, merge_parts(reader, plan), settings.cells_per_task)
        table.save(data_dir / "cells.npz")
        width, height = reader.dimensions
    return {"slide_mp": width * height / 1e6, "tissue_mp": sum(s.area_px for s in stats) / 1e6,
            "regions": len(stats), "cells": len(table), "segment_s": sum(s.segment_s for s in stats),
            "embed_s": sum(s.embed_s for s in stats), "total_s": time.perf_counter() - t0}


def run_merge_child(n_cells: int, data_dir: Path, n_parts: int = 250, dim: int = 46) -> dict:
    """Merge ``n_cells`` random cells from ``n_parts`` region parts on disk into a saved cell table (the merge
    step of a slide of that many cells; 46 features as the handcrafted featurizer gives)."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from preprocess.stages import _load_part, _save_part
    from preprocess.tiles.regions import RegionCells, build_cell_table, merge_region_cells

    rng = np.random.default_rng(0)
    side = 60000.0
    for i in range(n_parts):
        n = n_cells // n_parts
        xy = rng.uniform(0, side, (n, 2))
        _save_part(data_dir / f"{i}.npz", {"centroids_xy": xy, "boxes": np.c_[xy.astype(np.int32) - 4,
                   np.full((n, 2), 8, np.int32)], "features": rng.normal(size=(n, dim)).astype(np.float32)})
    t0 = time.perf_counter()
    cells = merge_region_cells([RegionCells(**_load_part(data_dir / f"{i}.npz")) for i in range(n_parts)])
    table = build_cell_table("0" * 16, cells, cells_per_task=20)
    table.save(data_dir / "cells.npz")
    return {"cells": len(table), "merge_s": time.perf_counter() - t0}


def measure(slide: Path | None, featurizer: str, merge_cells: int = 0) -> dict:
    """One run in a child process: its figures plus its peak RSS in MB."""
    with tempfile.TemporaryDirectory(prefix="hali-bench-") as tmp:
        what = ["--child", str(slide)] if slide else ["--merge-child", str(merge_cells)]
        proc = subprocess.Popen([sys.executable, __file__, *what, "--data-dir", tmp, "--featurizer", featurizer],
                                stdout=subprocess.PIPE, cwd=REPO)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bench child for {slide} failed (exit {os.waitstatus_to_exitcode(status)})")
    figures = json.loads(out.decode().strip().splitlines()[-1])
    figures["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return figures


def synthetic_slide(slides_dir: Path, size_px: int, tissue_fraction: float) -> Path:
    path = slides_dir / f"synthetic-{size_px}-tissue{tissue_fraction:g}.tiff"
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_big_slide.py"), str(path), "--size",
                        str(size_px), "--tissue-fraction", str(tissue_fraction)], check=True, cwd=REPO)
    return path


def report(name: str, runs: list[dict]) -> str:
    m = {key: median(r[key] for r in runs) for key in runs[0]}
    return (f"| {name} | {m['slide_mp']:.0f} | {m['tissue_mp']:.0f} | {m['regions']:.0f} | {m['cells']:.0f} | "
            f"{m['tissue_mp'] / m['segment_s']:.2f} | {m['cells'] / m['embed_s']:.0f} | "
            f"{m['cells'] / m['total_s']:.0f} | {m['total_s']:.0f} | {m['total_s'] / m['tissue_mp']:.2f} | "
            f"{m['peak_rss_mb']:.0f} | {len(runs)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000", help="sides of the synthetic slides, px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--featurizer", default="handcrafted")
    parser.add_argument("--slides-dir", type=Path, default=REPO / ".state" / "bench")
    parser.add_argument("--tissue-fraction", type=float, default=0.1,
                        help="tissue share of the synthetic slides (0.1 keeps a 20k slide to minutes on 2 cores)")
    parser.add_argument("--merge-cells", type=int, default=1_000_000, help="cells of the merge-only run; 0 skips it")
    parser.add_argument("--no-cmu", action="store_true", help="skip CMU-1-Small-Region")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--merge-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.data_dir, args.featurizer)))
        return 0
    if args.merge_child:
        print(json.dumps(run_merge_child(args.merge_child, args.data_dir)))
        return 0
    print(f"featurizer {args.featurizer}; {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for n_cells in (1000, args.merge_cells) if args.merge_cells else ():
        merged = measure(None, args.featurizer, n_cells)
        print(f"merge only: {merged['cells']} cells from 250 parts -> cell table in {merged['merge_s']:.1f} s, "
              f"peak RSS {merged['peak_rss_mb']:.0f} MB", flush=True)
    slides = [] if args.no_cmu or not CMU.exists() else [("CMU-1-Small-Region", CMU)]
    slides += [(f"synthetic {s} px", synthetic_slide(args.slides_dir, int(s), args.tissue_fraction))
               for s in args.sizes.split(",") if s]
    print("| slide | slide MP | tissue MP | regions | cells | segmentation MP/s | embedding cells/s | "
          "end-to-end cells/s | total s | s per tissue MP | peak RSS MB | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, path in slides:
        runs = [measure(path, args.featurizer)]
        while len(runs) < args.repeats and runs[0]["slide_mp"] < BIG_SLIDE_MP:
            runs.append(measure(path, args.featurizer))
        print(report(name, runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
