"""The HALI backend as Label Studio reaches it in tests: the real Flask app on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from werkzeug.serving import make_server

from ml_backend.http.app import create_app
from ml_backend.settings import BackendSettings
from preprocess.settings import PreprocessSettings


def hali_env(label_studio, redis_url: str, data_dir: Path) -> dict[str, str]:
    """The HALI_* variables that the backend, its jobs and `hali preprocess` read."""
    return {
        "HALI_DATA_DIR": str(data_dir),
        "HALI_LS_URL": label_studio.url,
        "HALI_LS_API_KEY": label_studio.api_key,
        "HALI_LS_FILES_ROOT": str(label_studio.files_root),
        "HALI_REDIS_URL": redis_url,
        "HALI_QUEUE_NAME": "hali-test",
    }


@contextmanager
def serve_backend(settings: BackendSettings) -> Iterator[str]:
    """Serve ``create_app(settings)`` in a thread; yields its URL."""
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def preprocess_settings(**overrides) -> PreprocessSettings:
    return PreprocessSettings(progress=False, **overrides)


def label_next_task(annotator, project_id: int, n_cells: int | None = 6) -> dict:
    """``annotator`` takes the next task and submits its first ``n_cells`` boxes (None: all of them) labelled
    Negative, Positive, Negative, ... as the UI does; returns the task."""
    task = annotator.next_task(project_id)
    regions = [dict(r, value=dict(r["value"])) for r in task["predictions"][0]["result"]]
    for i, region in enumerate(regions[:n_cells]):
        region["value"]["rectanglelabels"] = ["Positive" if i % 2 else "Negative"]
    annotator.submit(task["id"], regions, lead_time=4.0, project_id=project_id)
    return task
