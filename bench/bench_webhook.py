"""How long Label Studio's Submit waits on HALI: `/webhook` latency over real HTTP with a real Redis.

Label Studio delivers webhooks synchronously with a 1 s timeout and no retry, so the handler must only
record and enqueue. This starts a redis-server and the real Flask app (threaded werkzeug server) on free
loopback ports, posts an ANNOTATION_CREATED payload for a 20-cell tile N times, and prints the median and
95th-percentile latency. Run: .venv/bin/python bench/bench_webhook.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from label_config import CellBox, TileTask, build_label_config, cell_to_region  # noqa: E402
from ml_backend.http.app import create_app  # noqa: E402
from ml_backend.settings import BackendSettings  # noqa: E402
from scripts import services  # noqa: E402


def main(n: int = 300) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = services.free_port()
        redis_proc = services.start_redis(port, Path(tmp))
        try:
            settings = BackendSettings(data_dir=Path(tmp), ls_files_root=Path(tmp),
                                       redis_url=f"redis://127.0.0.1:{port}/0", queue_name="bench")
            server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_port}/webhook"
            times = _post_many(url, n)
            server.shutdown()
        finally:
            services.stop_process(redis_proc)
    ms = sorted(t * 1000 for t in times)
    print(f"/webhook over HTTP, {n} posts of a 20-cell annotation: median {statistics.median(ms):.2f} ms, "
          f"p95 {ms[int(0.95 * len(ms))]:.2f} ms, max {ms[-1]:.2f} ms")


def _post_many(url: str, n: int) -> list[float]:
    cells = tuple(CellBox(f"c{i}", 20 * i, 0, 12, 12) for i in range(20))
    tile = TileTask("t", "s", "/x.png", 0, 0, 400, 20, 1.0, 0.5, cells)
    config = build_label_config(["Tumor", "Other"])
    session, times = requests.Session(), []
    rng = np.random.default_rng(0)
    for i in range(n):
        labels = rng.choice(["Tumor", "Other"], size=len(cells))
        body = {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": config},
                "annotation": {"id": i, "result": [cell_to_region(c, tile, str(lab)) for c, lab in zip(cells, labels)]},
                "task": {"id": i, "data": tile.to_task_data()}}
        t0 = time.perf_counter()
        r = session.post(url, json=body, timeout=5)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
    return times


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
