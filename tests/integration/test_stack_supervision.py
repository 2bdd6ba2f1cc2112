"""``make up``'s supervisor: a worker killed with SIGKILL (as the kernel's out-of-memory killer does) is started
again, and the retrain that labels enqueue meanwhile still happens within 60 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hali_backend import preprocess_settings
from redis import Redis

from adapters.label_studio import LabelStudioGateway
from ml_backend.labels.redis_store import RedisLabelStore
from preprocess.run import run_preprocess
from scripts import services

pytestmark = pytest.mark.integration
RESTART_WITHIN_S = 60.0


def _wait_for(what: str, check, timeout_s: float, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the supervisor exited:\n{services.log_tail(proc.log_path)}"
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s; supervisor log:\n{services.log_tail(proc.log_path)}")


def _pid(state: Path, name: str) -> int | None:
    path = state / "pids" / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    return pid if services.pid_alive(pid) else None


@pytest.fixture
def supervised(hali_environ, redis_url, tmp_path):
    """``stack.py supervise`` on this test's Redis and Label Studio; yields (state dir, backend URL, process)."""
    state, port = tmp_path / "state", services.free_port()
    env = {**os.environ, "HALI_STATE_DIR": str(state), "HALI_BACKEND_PORT": str(port),
           "HALI_REDIS_PORT": redis_url.rsplit(":", 1)[1].split("/")[0], "HALI_BACKEND_WORKERS": "1",
           "HALI_BACKEND_PASSWORD": "", "HALI_WEBHOOK_SECRET": "", "OMP_NUM_THREADS": "1"}
    proc = services.spawn([sys.executable, str(services.REPO_ROOT / "scripts/stack.py"), "supervise"],
                          tmp_path / "supervisor.log", env=env, cwd=services.REPO_ROOT, name="supervisor")
    try:
        _wait_for("the backend and the worker started", lambda: _pid(state, "backend") and _pid(state, "worker"),
                  240, proc)
        yield state, f"http://{services.LOOPBACK}:{port}", proc
    finally:
        services.stop_process(proc, timeout_s=90)
        for name in ("worker", "backend"):
            pid = _pid(state, name)
            if pid is not None:
                services.stop_pid(pid)


def test_a_killed_worker_is_restarted_and_the_retrain_still_happens(supervised, label_studio, redis_url,
                                                                   ihc_slide, new_annotator):
    state, backend_url, supervisor = supervised
    gateway = LabelStudioGateway.connect(label_studio.url, label_studio.api_key)
    pre = preprocess_settings(classes="Positive,Negative", cells_per_task=10, mpp=0.25, backend_url=backend_url)
    pid = run_preprocess(ihc_slide, "HALI supervised", pre, gateway).project_id

    worker = _pid(state, "worker")
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()

    annotator = new_annotator()
    task = annotator.next_task(pid)
    prediction = task["predictions"][0]
    result = [dict(r, value=dict(r["value"])) for r in prediction["result"]]
    for i, region in enumerate(result[:6]):
        region["value"]["rectanglelabels"] = ["Positive" if i % 2 else "Negative"]
    annotator.submit(task["id"], result, lead_time=5.0, parent_prediction=prediction["id"], project_id=pid)

    store = RedisLabelStore(Redis.from_url(redis_url))
    left = RESTART_WITHIN_S - (time.monotonic() - killed_at)
    status = _wait_for("a retrain to version 1", lambda: (store.status(pid) or {}).get("version") == 1 and
                       store.status(pid), left, supervisor)
    assert status["n_labels"] == 6
    assert _pid(state, "worker") not in (None, worker), "the worker runs again, as a new process"
    record = json.loads((state / "supervisor.json").read_text())
    assert record["worker"]["restarts"] == 1 and record["backend"]["restarts"] == 0
