"""`/predict` latency for one task, over real HTTP, with a trained model and a real redis-server.

    .venv/bin/python bench/bench_predict.py [--quick] [--requests 300] [--cells 20000] [--dims 46,512]
        [--cells-per-task 20]

Label Studio calls ``/predict`` when an annotator opens a task that has no prediction of the served
version (100 s timeout; for HALI: a task outside the top K, docs/predictions.md), so this is the wait before
the boxes show their suggested classes (Label Studio adds its own /health and /setup calls and the storing).
A synthetic slide of ``--cells`` cells in ``--cells-per-task`` tiles (20, HALI_CELLS_PER_TASK's default) is written as a cell table, a head trained on 1,000 of its
cells is saved in the project's model store, and the real Flask app (threaded werkzeug server, as
bench_webhook.py) answers on a free loopback port with a real redis-server beside it. After 5 warm-up
requests (the first loads the model and the cell table), ``--requests`` posts of one task each, for
tiles drawn at random, give the median, p95 and max latency. The same requests through Flask's test
client (JSON and routing, no socket) and the bare ``Predictor.predict`` call (medians) show where the
time goes; on a busy machine the gap to HTTP is mostly waiting for a core (client and server threads).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.storage import LocalStorage  # noqa: E402
from bench import benchutil  # noqa: E402
from bench.synthetic import CLASSES, SyntheticSlide, make_slide  # noqa: E402
from label_config import build_label_config, parse_label_set  # noqa: E402
from ml_backend.http.app import create_app  # noqa: E402
from ml_backend.model.head import HeadClassifier  # noqa: E402
from ml_backend.model.store import ModelStore  # noqa: E402
from ml_backend.settings import BackendSettings  # noqa: E402
from ml_backend.suggestions.predictor import Predictor  # noqa: E402
from preprocess.layout import DataLayout  # noqa: E402
from scripts import services  # noqa: E402

PROJECT_ID = 1
CONFIG = build_label_config(CLASSES)


def main() -> int:
    args = _parse_args()
    torch.set_num_threads(1)  # `hali serve` answers many small requests; one thread each is what scales
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per request
    n = args.requests or (30 if args.quick else 300)
    dims = [int(d) for d in (args.dims or ("46" if args.quick else "46,512")).split(",")]
    print(benchutil.header(f"/predict latency, one {args.cells_per_task}-cell task per request",
                           " ".join(["bench/bench_predict.py", *sys.argv[1:]])))
    print(f"\nslide of {args.cells:,} cells in {args.cells_per_task}-cell tasks; {n} requests after 5 warm-up ones; milliseconds")
    print("| features | HTTP median | HTTP p95 | HTTP max | Flask app, no socket | Predictor.predict | response KiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in dims:
        print(_row(d, args.cells, n, args.cells_per_task), flush=True)
    print(benchutil.footer())
    return 0


def _row(dims: int, n_cells: int, n_requests: int, cells_per_task: int) -> str:
    slide = make_slide(n_cells, dims, cells_per_tile=cells_per_task, seed=dims)
    with tempfile.TemporaryDirectory(prefix="hali-bench-") as tmp:
        root, port = Path(tmp), services.free_port()
        settings = BackendSettings(data_dir=root / "data", ls_files_root=root / "files", queue_name="bench",
                                   redis_url=f"redis://{services.LOOPBACK}:{port}/0")
        layout = DataLayout(settings.data_dir, settings.ls_files_root)
        _prepare(slide, layout)
        redis_proc = services.start_redis(port, root / "redis")
        try:
            http_ms, size = _over_http(settings, slide, n_requests)
            app_ms = _without_socket(settings, slide, n_requests)
        finally:
            services.stop_process(redis_proc)
        local_ms = _in_process(layout, slide, n_requests)
    return (f"| {dims} | {statistics.median(http_ms):.1f} | {benchutil.percentile(http_ms, 95):.1f} | "
            f"{max(http_ms):.1f} | {statistics.median(app_ms):.1f} | {statistics.median(local_ms):.1f} | "
            f"{size / 1024:.0f} |")


def _prepare(slide: SyntheticSlide, layout: DataLayout) -> None:
    """The slide's cell table and a head trained on its first 1,000 cells, as model version 1."""
    slide.save_cell_table(layout)
    # one output per target of the config: the classes, then "Not a nucleus" (never labelled here)
    n_targets = len(parse_label_set(CONFIG).targets)
    head = HeadClassifier(n_targets, random_state=0).fit(slide.features[:1000], slide.y[:1000])
    ModelStore(layout.models_dir(PROJECT_ID)).save(1, head, {"classes": CLASSES})


def _bodies(slide: SyntheticSlide, n: int) -> list[dict]:
    """``n`` request bodies as Label Studio sends them, each for one tile drawn at random (seeded)."""
    picks = np.random.default_rng(0).integers(len(slide.tiles), size=n)
    return [{"tasks": [{"id": int(i), "data": slide.tiles[i].to_task_data()}], "project": f"{PROJECT_ID}.1700000000",
             "label_config": CONFIG, "params": {}} for i in picks]


def _over_http(settings: BackendSettings, slide: SyntheticSlide, n: int) -> tuple[list[float], int]:
    """Latencies (ms) of ``n`` POST /predict over loopback, and the size of the last answer in bytes."""
    server = make_server(services.LOOPBACK, 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, session = f"http://{services.LOOPBACK}:{server.server_port}/predict", requests.Session()
    times, size = [], 0
    try:
        for i, body in enumerate(_bodies(slide, n + 5)):
            start = time.perf_counter()
            r = session.post(url, json=body, timeout=100)
            elapsed = time.perf_counter() - start
            r.raise_for_status()
            if len(r.json()["results"][0]["result"]) != len(body["tasks"][0]["data"]["cells"]):
                raise RuntimeError("/predict answered a different number of regions than the tile has cells")
            size = len(r.content)
            if i >= 5:
                times.append(elapsed * 1000)
    finally:
        server.shutdown()
    return times, size


def _without_socket(settings: BackendSettings, slide: SyntheticSlide, n: int) -> list[float]:
    """Latencies (ms) of the same requests through Flask's test client: JSON and routing, no socket."""
    client = create_app(settings).test_client()
    times = []
    for i, body in enumerate(_bodies(slide, n + 5)):
        start = time.perf_counter()
        client.post("/predict", json=body).get_json()
        if i >= 5:
            times.append((time.perf_counter() - start) * 1000)
    return times


def _in_process(layout: DataLayout, slide: SyntheticSlide, n: int) -> list[float]:
    predictor = Predictor(layout, LocalStorage(layout.data_dir))  # the local layout hali preprocess writes
    times = []
    for i, body in enumerate(_bodies(slide, n + 5)):
        start = time.perf_counter()
        predictor.predict(PROJECT_ID, body["tasks"], CONFIG)
        if i >= 5:
            times.append((time.perf_counter() - start) * 1000)
    return times


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 requests, 46-d features only: a smoke run")
    parser.add_argument("--requests", type=int, default=None, help="timed requests per feature size (default 300)")
    parser.add_argument("--cells", type=int, default=20_000, help="cells in the synthetic slide")
    parser.add_argument("--dims", default=None, help="feature sizes (default 46,512)")
    parser.add_argument("--cells-per-task", type=int, default=20, help="cells per task (default 20)")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
