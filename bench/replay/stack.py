"""The whole product on free loopback ports for one replay: redis, Label Studio, ``hali serve``, one
``hali worker``; and ``hali preprocess`` through its CLI. Only the CLI and HTTP are used, so a change of
the default segmenter, featurizer or learner on main is picked up as it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from scripts import services
from scripts.stack import hali_argv

ADMIN_EMAIL = "admin@hali.test"
ADMIN_PASSWORD = "hali-test-admin"  # the integration tests' cached data dir has this admin and token
ADMIN_TOKEN = hashlib.sha1(b"hali integration tests").hexdigest()


@dataclass(frozen=True)
class Stack:
    """A running stack. ``data_dir``/``files_root`` are Label Studio's (for ``reset_password``)."""

    url: str
    api_key: str
    backend_url: str
    env: dict[str, str]
    data_dir: Path
    files_root: Path
    hali_data_dir: Path
    ls_bin: Path


@contextmanager
def running_stack(root: Path, ls_cache: Path | None) -> Iterator[Stack]:
    """Start everything under ``root`` (a fresh folder); stop it all on exit. ``ls_cache``: a folder of
    migrated Label Studio data dirs as the integration tests cache them (``.state/test-cache``)."""
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stop:
        redis_port = services.free_port()
        stop.callback(services.stop_process, services.start_redis(redis_port, root / "redis"))
        ls_bin = services.find_label_studio()
        data_dir, files_root = root / "label-studio", root / "ls-files"
        template = _template(ls_bin, ls_cache)
        token, password = (ADMIN_TOKEN, ADMIN_PASSWORD) if template else (os.urandom(20).hex(), os.urandom(12).hex())
        if template:
            shutil.copytree(template, data_dir)
        port = services.free_port()
        stop.callback(services.stop_process, services.start_label_studio(
            port, data_dir, files_root, ADMIN_EMAIL, password, token, ls_bin))
        url = f"http://{services.LOOPBACK}:{port}"
        backend_port = services.free_port()
        backend_url = f"http://{services.LOOPBACK}:{backend_port}"
        env = {**os.environ, "HALI_DATA_DIR": str(root / "hali-data"), "HALI_LS_URL": url, "HALI_LS_API_KEY": token,
               "HALI_LS_FILES_ROOT": str(files_root), "HALI_REDIS_URL": f"redis://{services.LOOPBACK}:{redis_port}/0",
               "HALI_BACKEND_URL": backend_url, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        backend = services.spawn(hali_argv("serve", "--host", services.LOOPBACK, "--port", str(backend_port)),
                                 root / "logs" / "backend.log", env=env, cwd=services.REPO_ROOT, name="hali serve")
        stop.callback(services.stop_process, backend)
        services.wait_http(f"{backend_url}/health", 120, backend)
        worker = services.spawn(hali_argv("worker"), root / "logs" / "worker.log", env=env, cwd=services.REPO_ROOT,
                                name="hali worker")
        stop.callback(services.stop_process, worker)
        time.sleep(2.0)
        if worker.poll() is not None:
            raise services.StackError(services.died_message(worker, "it began to work"))
        yield Stack(url, token, backend_url, env, data_dir, files_root, root / "hali-data", ls_bin)


def _template(ls_bin: Path, ls_cache: Path | None) -> Path | None:
    """The cached, migrated data dir for this Label Studio install, if there is one (else a cold start)."""
    if ls_cache is None:
        return None
    key = hashlib.sha1(f"{ls_bin.resolve()}:{ls_bin.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    template = Path(ls_cache) / f"label-studio-{key}"
    return template if template.exists() else None


def preprocess(stack: Stack, folder: Path, project: str, classes: list[str], mpp: float,
               cells_per_task: int | None, log_path: Path) -> float:
    """``hali preprocess FOLDER --project P --classes ... --mpp ... --backend-url ...``; returns its seconds."""
    argv = hali_argv("preprocess", str(folder), "--project", project, "--classes", ",".join(classes),
                     "--mpp", str(mpp), "--backend-url", stack.backend_url, "--no-progress")
    if cells_per_task is not None:
        argv += ["--cells-per-task", str(cells_per_task)]
    start = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        done = subprocess.run(argv, env=stack.env, cwd=services.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise services.StackError(f"hali preprocess exited {done.returncode}; last lines of {log_path}:\n"
                                  f"{services.log_tail(log_path)}")
    return time.perf_counter() - start
