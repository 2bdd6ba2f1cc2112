"""The product's yardstick: an end-to-end replay through a real Label Studio with the product's own segmentation.

Rebuilds the CoNSeP test images from their crops (ground-truth centroids in source pixels), starts redis,
Label Studio, ``hali serve`` and one ``hali worker`` on free loopback ports, runs ``hali preprocess`` on the
images (the product's default segmenter and featurizer), and lets a scripted non-admin annotator walk
``--tasks`` tasks in the order Label Studio serves them ("Label All Tasks": ``/api/projects/<id>/next``).
Its answers come from ground truth: the nearest labelled centroid within ``--match-um`` of each box centre,
and "not a nucleus" when there is none (the reserved label when the project has it, else the box is deleted).
It submits as the UI does and never waits for a retrain; a thread timestamps each model-version change.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_replay.py --classes-map 4class --classes-map tils \
        --tasks 40 --ls-cache .state/test-cache --out replay.json

Prints one table per class map (per task, then totals) and writes them all to ``--out`` as JSON.
``hali simulate`` stays the tool for fast sweeps; this is the slow, honest one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_replay.py` from anywhere

from bench.annotator import make_annotator
from bench.replay.scoring import map_class, map_classes, retrain_lags, summarize
from bench.replay.stack import Stack, preprocess, running_stack
from bench.replay.walk import GroundTruth, VersionWatch, not_nucleus_label, pool_truth, source_of_slides, walk
from ml_backend.simulation.dataset import parse_class_map
from ml_backend.simulation.efficiency import TimeModel
from preprocess.datasets.consep import MPP, load_consep_split, write_sources
from scripts import services

PRESETS = {"4class": "epithelial=epithelial,inflammatory=inflammatory,spindle=spindle,other=other",
           "tils": "inflammatory=TIL,*=other"}
RAW_CLASSES = ("epithelial", "inflammatory", "spindle", "other")


def _think(value: str) -> float | None:
    return None if value == "model" else float(value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Stop the stack on Ctrl-C or kill, also when started in the background (where SIGINT is ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = args.data
    if not (data / "nuclei.csv").exists():
        print(f"skipped: no CoNSeP patches at {data} (see ../shared/data/README.md)")
        return 0
    cache = args.cache_dir
    print(f"rebuilding CoNSeP {args.split} sources into {cache} ...", flush=True)
    sources = load_consep_split(data, args.split, args.limit_images)
    paths = write_sources(sources, cache / "images")
    folder = _only(cache / "images", paths)
    print(f"  {len(sources)} images, worst overlap MAD {max(m for _, _, m in sources.values()):.2f} grey levels, "
          f"{sum(len(n.xy) for _, n, _ in sources.values()):,} nuclei", flush=True)
    time_model = TimeModel(*(float(v) for v in args.time_model.split(",")))
    root = Path(tempfile.mkdtemp(prefix="hali-replay-", dir=args.work_dir))
    reports = []
    with running_stack(root, args.ls_cache) as stack:
        print(f"stack up under {root} (Label Studio {stack.url}, backend {stack.backend_url})", flush=True)
        annotator = make_annotator(stack, f"replay-{uuid.uuid4().hex[:6]}@hali.test", uuid.uuid4().hex)
        for spec in args.classes_map or ["4class"]:
            reports.append(_one_run(stack, annotator, folder, sources, spec, args, time_model, root))
    out = {"time_model": time_model.to_dict(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": reports}
    args.out.write_text(json.dumps(out, indent=1, default=_jsonable))
    print(f"wrote {args.out}")
    return 0


def _one_run(stack: Stack, annotator, folder: Path, sources, spec: str, args, time_model: TimeModel,
             root: Path) -> dict:
    class_map = parse_class_map(PRESETS.get(spec, spec))
    classes = map_classes(class_map, RAW_CLASSES)
    gt = GroundTruth({s: n.xy for s, (_, n, _) in sources.items()},
                     {s: np.array([map_class(c, class_map) for c in n.label], dtype=object)
                      for s, (_, n, _) in sources.items()})
    title = f"replay {spec}"[:50]
    print(f"\n== {title}: classes {classes}; hali preprocess ...", flush=True)
    pre_s = preprocess(stack, folder, title, classes, MPP, args.cells_per_task, root / "logs" / "preprocess.log")
    project = _admin_get(stack, "/api/projects/?page_size=100")
    project = next(p for p in (project.get("results", project) if isinstance(project, dict) else project)
                   if p["title"] == title)
    pid = project["id"]
    not_nucleus = not_nucleus_label(project["label_config"])
    tasks = _admin_get(stack, f"/api/tasks?project={pid}&fields=all&page_size=100000")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    slide_sources = source_of_slides(stack.hali_data_dir)
    max_dist_px = args.match_um / MPP
    pool, matched = pool_truth(tasks, slide_sources, gt, max_dist_px)
    print(f"  preprocess {pre_s:.0f} s: {len(tasks)} tasks, {sum(pool.values())} boxes; not-a-nucleus mode: "
          f"{'label ' + repr(not_nucleus) if not_nucleus else 'delete the box'}", flush=True)
    watch = VersionWatch(stack.url, stack.api_key, pid)
    watch.start()
    started = time.monotonic()
    done = walk(annotator, pid, watch, gt, slide_sources, matched, args.tasks, max_dist_px, args.think_s,
                time_model, args.seconds_per_unit, not_nucleus)
    walk_s = time.monotonic() - started
    _settle(watch, done.submit_times, args.settle_s)
    watch.stop()
    changes = [t for t, _ in watch.changes]
    lags = retrain_lags(done.submit_times, changes)
    totals = summarize(done.records, pool, lags)
    totals.update(preprocess_s=pre_s, walk_s=walk_s, not_nucleus_mode=done.not_nucleus_mode,
                  version_changes=len(changes), pool_tasks=len(tasks), pool_boxes=sum(pool.values()),
                  gt_mix=_mix(Counter(c for labels in gt.label.values() for c in labels)))
    print(_table(done.records, totals, lags))
    return {"classes_map": spec, "classes": classes, "project_id": pid, "totals": totals,
            "tasks": [vars(r) for r in done.records], "lags_s": lags,
            "version_changes": [(t - started, v) for t, v in watch.changes]}


def _settle(watch: VersionWatch, submits: list[float], settle_s: float) -> None:
    """Give the last submit's retrain up to ``settle_s`` to land, so its lag is measured too."""
    deadline = time.monotonic() + settle_s
    while submits and time.monotonic() < deadline:
        if any(t > submits[-1] for t, _ in watch.changes):
            return
        time.sleep(0.5)


def _table(records, totals: dict, lags) -> str:
    head = ("| # | task | source | boxes | nuclei | shown | kept | classes (truth) | model | stale | lag s |\n"
            "|---:|---:|---|---:|---:|---:|---:|---|---|---|---:|")
    rows = [f"| {r.rank} | {r.task_id} | {r.source} | {r.n_boxes} | {_pct(r.n_nuclei, r.n_boxes)} | "
            f"{r.n_suggested} | {r.n_kept} | {_classes(r.truth)} | {r.model_version or '-'} | "
            f"{'yes' if r.stale else ''} | {'-' if lag is None else f'{lag:.1f}'} |" for r, lag in zip(records, lags)]
    t = totals
    lines = [
        "", head, *rows, "",
        f"tasks {t['tasks']} ({t['assisted_tasks']} with suggestions) from {t['sources']} source images; "
        f"boxes shown {t['boxes']}, nuclei {_fmt(t['nuclei_share'])} "
        f"(duplicates {t['duplicate_boxes']}, GT nuclei in served tiles without a box {t['missed_nuclei']})",
        f"suggestions kept: {t['kept']} of {t['boxes']} boxes shown = {_fmt(t['kept_share_of_boxes'])} "
        f"({_fmt(t['kept_share_of_assisted_boxes'])} in tasks with suggestions)",
        f"speed-up under the time model: {_x(t['speedup'])} over all tasks, {_x(t['speedup_assisted'])} "
        "over tasks with suggestions",
        f"classes labelled: {_mixline(t['labelled_mix'])}",
        f"pool of boxes:    {_mixline(t['pool_mix'])}",
        f"ground truth:     {_mixline(t['gt_mix'])}",
        f"retrain lag (submit -> next model version): median {_s(t['retrain_lag_median_s'])}, max "
        f"{_s(t['retrain_lag_max_s'])}, {t['retrain_lag_unmeasured']} submit(s) never followed by one; "
        f"{t['version_changes']} version changes; {t['stale_tasks']} tasks served under a stale model",
        f"not a nucleus: {t['not_nucleus_mode']}; preprocess {t['preprocess_s']:.0f} s, walk {t['walk_s']:.0f} s",
    ]
    return "\n".join(lines)


def _admin_get(stack: Stack, path: str):
    import requests

    session = requests.Session()
    session.trust_env = False
    response = session.get(f"{stack.url}{path}", headers={"Authorization": f"Token {stack.api_key}"}, timeout=120)
    response.raise_for_status()
    return response.json()


def _only(folder: Path, paths: dict[str, Path]) -> Path:
    """``folder`` holding exactly ``paths`` (a --limit-images run after a full one must not see the rest)."""
    wanted = {p.name for p in paths.values()}
    stray = [p for p in folder.glob("*.tif") if p.name not in wanted]
    if not stray:
        return folder
    sub = folder / f"subset-{len(wanted)}"
    sub.mkdir(exist_ok=True)
    for p in paths.values():
        if not (sub / p.name).exists():
            os.link(p, sub / p.name)
    return sub


def _mix(counts: Counter) -> dict[str, float]:
    n = sum(counts.values())
    return {c: k / n for c, k in counts.most_common()}


def _classes(truth: dict[str, int]) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(truth.items(), key=lambda kv: -kv[1]))


def _mixline(mix: dict[str, float]) -> str:
    return ", ".join(f"{c} {v:.0%}" for c, v in mix.items())


def _pct(n: int, d: int) -> str:
    return f"{n / d:.0%}" if d else "-"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _s(v) -> str:
    return "-" if v is None else f"{v:.1f} s"


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=services.REPO_ROOT.parent / "shared/data/consep_patches")
    p.add_argument("--split", default="test")
    p.add_argument("--limit-images", type=int, help="only the first N source images (by number)")
    p.add_argument("--classes-map", action="append",
                   help=f"a preset ({', '.join(PRESETS)}) or RAW=CLASS,...,*=CLASS; repeat for several runs "
                        "(one stack, one project each); default 4class")
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--cells-per-task", type=int, help="passed to hali preprocess; default the product's")
    p.add_argument("--match-um", type=float, default=3.0, help="box centre to GT centroid, at most (um)")
    p.add_argument("--think-s", type=_think, default=0.0,
                   help="seconds the annotator spends per task, or 'model': the task's time-model cost in seconds")
    p.add_argument("--seconds-per-unit", type=float, default=2.0,
                   help="lead_time sent per time-model unit (one unassisted class click)")
    p.add_argument("--time-model", default="1,0.1,1,3",
                   help="as hali simulate: unassisted per cell, review per cell, per wrong suggestion, per task")
    p.add_argument("--settle-s", type=float, default=60.0, help="wait this long for the last retrain to land")
    p.add_argument("--cache-dir", type=Path, default=services.REPO_ROOT / ".state/replay-cache",
                   help="stitched source images (TIFF, mpp 0.25)")
    p.add_argument("--work-dir", type=Path, help="parent of the stack's temporary folder (default: system tmp)")
    p.add_argument("--ls-cache", type=Path, default=services.REPO_ROOT / ".state/test-cache",
                   help="migrated Label Studio data dirs as the integration tests cache them (else a cold start)")
    p.add_argument("--out", type=Path, default=Path("replay.json"))
    return p


if __name__ == "__main__":
    sys.exit(main())
