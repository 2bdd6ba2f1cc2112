"""The HALI dev stack: redis, Label Studio, the ML backend and one rq worker, on loopback.

Stdlib only, so it runs before any venv exists and the integration-test fixtures can import it::

    python scripts/stack.py up       # start what is not running, then preprocess the demo slide
    python scripts/stack.py status
    python scripts/stack.py down

``up`` keeps its state under ``.state/`` (``HALI_STATE_DIR``): pid files, logs, the Label Studio
data dir, the files root that Label Studio serves, the embeddings store and ``credentials.json``.
Ports come from ``HALI_REDIS_PORT`` (16379), ``HALI_LS_PORT`` (8080) and ``HALI_BACKEND_PORT``
(9090); ``up`` saves them in ``ports.json`` for ``status`` and the next ``up``.

Starting and stopping each service is ``scripts/services.py``, which the integration tests share.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/stack.py`: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.services import (  # noqa: E402
    LOOPBACK,
    REPO_ROOT,
    ServiceUnavailable,
    StackError,
    died_message,
    pid_alive,
    port_in_use,
    redis_ping,
    spawn,
    start_label_studio,
    start_redis,
    stop_pid,
    stop_process,
    wait_http,
)

ADMIN_EMAIL = "admin@hali.local"
DEMO_CLASSES = "Positive,Negative"
DEMO_MPP = 0.25  # see scripts/demo_slide.py

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


@dataclass(frozen=True)
class StackConfig:
    """Where ``up`` keeps its state and which loopback ports it uses."""

    state_dir: Path
    redis_port: int
    ls_port: int
    backend_port: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StackConfig:
        """Ports from the environment, else those the last ``up`` saved, else the defaults."""
        state_dir = Path(env.get("HALI_STATE_DIR", REPO_ROOT / ".state")).resolve()
        saved_path = state_dir / "ports.json"
        saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}

        def port(var: str, key: str, default: int) -> int:
            return int(env.get(var) or saved.get(key) or default)

        return cls(state_dir=state_dir, redis_port=port("HALI_REDIS_PORT", "redis", 16379),
                   ls_port=port("HALI_LS_PORT", "label-studio", 8080),
                   backend_port=port("HALI_BACKEND_PORT", "backend", 9090))

    def save_ports(self) -> None:
        """Remember the ports, so ``status`` and the next ``up`` find the services again."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports = {"redis": self.redis_port, "label-studio": self.ls_port,
                 "backend": self.backend_port}
        (self.state_dir / "ports.json").write_text(json.dumps(ports, indent=2) + "\n")

    @property
    def ls_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ls_port}"

    @property
    def backend_url(self) -> str:
        return f"http://{LOOPBACK}:{self.backend_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    @property
    def ls_data_dir(self) -> Path:
        return self.state_dir / "label-studio"

    @property
    def files_root(self) -> Path:
        return self.state_dir / "files"

    def pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"


SERVICES = ("redis", "label-studio", "backend", "worker")  # start order; down stops in reverse
# What each service's command line contains: a pid file whose pid now names another program
# (the pid was reused after a reboot) is stale, and that program is never signalled.
_CMDLINE_MARKERS = {"redis": "redis-server", "label-studio": "label-studio",
                    "backend": "ml_backend.cli", "worker": "ml_backend.cli"}


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step and how long it took."""
    print(f"==> {title} ...", flush=True)
    start = time.monotonic()
    yield
    print(f"    {title}: {time.monotonic() - start:.1f} s", flush=True)


def load_credentials(path: Path) -> dict[str, str]:
    """The admin e-mail, password and legacy token, and the backend's basic-auth password and webhook secret:
    made once and reused by every ``up`` (a file from an older ``up`` gains the keys it lacks)."""
    creds = json.loads(path.read_text()) if path.exists() else {}
    made = {"username": ADMIN_EMAIL, "password": secrets.token_urlsafe(12), "token": secrets.token_hex(20),
            "backend_password": secrets.token_urlsafe(16), "webhook_secret": secrets.token_urlsafe(16)}
    if set(made) - set(creds):
        creds = {**made, **creds}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds, indent=2) + "\n")
        path.chmod(0o600)
    return creds


def read_pid(cfg: StackConfig, name: str) -> int | None:
    """The pid of a running service from its pid file, or None (a stale pid file is removed)."""
    pid_file = cfg.pid_file(name)
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    if pid > 0 and pid_alive(pid) and _cmdline_has(pid, _CMDLINE_MARKERS[name]):
        return pid
    pid_file.unlink()
    return None


def _cmdline_has(pid: int, marker: str) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no /proc (macOS): trust the pid file
        return True
    return marker in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")


def write_pid(cfg: StackConfig, name: str, pid: int) -> None:
    cfg.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    cfg.pid_file(name).write_text(f"{pid}\n")


def hali_env(cfg: StackConfig, creds: Mapping[str, str]) -> dict[str, str]:
    """The settings of every ``hali`` command; values already in the environment win."""
    env = dict(os.environ)
    defaults = {"HALI_DATA_DIR": str(cfg.state_dir / "data"), "HALI_LS_URL": cfg.ls_url,
                "HALI_LS_API_KEY": creds["token"], "HALI_LS_FILES_ROOT": str(cfg.files_root),
                "HALI_REDIS_URL": cfg.redis_url, "HALI_BACKEND_URL": cfg.backend_url,
                "HALI_BACKEND_PASSWORD": creds["backend_password"], "HALI_WEBHOOK_SECRET": creds["webhook_secret"]}
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def venv_python() -> Path:
    """The project venv's python (``HALI_PYTHON`` overrides), or this interpreter."""
    override = os.environ.get("HALI_PYTHON")
    if override:
        return Path(override)
    candidate = REPO_ROOT / ".venv/bin/python"
    return candidate if candidate.exists() else Path(sys.executable)


def hali_argv(*args: str) -> list[str]:
    """The ``hali`` console script with ``args``, run by the project venv.

    Raises ServiceUnavailable if ``ml_backend.cli`` does not import there.
    """
    python = venv_python()
    probe = subprocess.run([str(python), "-c", "import ml_backend.cli"], cwd=REPO_ROOT,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ServiceUnavailable(f"the hali CLI does not import with {python} "
                                 f"(`import ml_backend.cli` failed): run `make install`.\n"
                                 f"{probe.stderr.strip()[-1500:]}")
    run_main = "import sys; from ml_backend.cli import main; sys.exit(main())"
    return [str(python), "-c", run_main, *args]


def ensure_service(cfg: StackConfig, name: str, start) -> None:
    """Start service ``name`` with ``start() -> Popen`` unless its pid file names a live process."""
    pid = read_pid(cfg, name)
    if pid is not None:
        print(f"    {name} already running (pid {pid})")
        return
    with step(f"start {name}"):
        proc = start()
        write_pid(cfg, name, proc.pid)
        print(f"    {name} pid {proc.pid}, log {getattr(proc, 'log_path', '-')}")


def start_backend(cfg: StackConfig, env: Mapping[str, str]) -> subprocess.Popen:
    if port_in_use(cfg.backend_port):
        raise StackError(f"port {cfg.backend_port} is taken, so the backend cannot listen there: "
                         "stop what uses it or set HALI_BACKEND_PORT")
    argv = hali_argv("serve", "--host", LOOPBACK, "--port", str(cfg.backend_port))
    proc = spawn(argv, cfg.log_file("backend"), env=env, cwd=REPO_ROOT, name="hali serve")
    try:
        wait_http(f"{cfg.backend_url}/health", 60, proc)
    except StackError:
        stop_process(proc)
        raise
    return proc


def start_worker(cfg: StackConfig, env: Mapping[str, str]) -> subprocess.Popen:
    proc = spawn(hali_argv("worker"), cfg.log_file("worker"), env=env, cwd=REPO_ROOT,
                 name="hali worker")
    time.sleep(2.0)  # an rq worker has no health endpoint: check it did not die at once
    if proc.poll() is not None:
        raise StackError(died_message(proc, "it began to work"))
    return proc


def demo_slide(cfg: StackConfig) -> tuple[Path, list[str]]:
    """The slide ``up`` preprocesses, and the extra CLI options it needs."""
    if os.environ.get("SLIDE"):
        return Path(os.environ["SLIDE"]).resolve(), []
    shared = REPO_ROOT.parent / "shared/data/wsi/CMU-1-Small-Region.svs"
    if shared.exists():
        return shared, []
    path = cfg.state_dir / "demo/ihc.tiff"
    if not path.exists():
        with step(f"write demo slide {path}"):
            script = REPO_ROOT / "scripts/demo_slide.py"
            subprocess.run([str(venv_python()), str(script), str(path)], check=True)
    return path, ["--mpp", str(DEMO_MPP), "--classes", DEMO_CLASSES]


def up(cfg: StackConfig) -> int:
    """Start what is not running, preprocess the demo slide, print where to log in."""
    start = time.monotonic()
    creds = load_credentials(cfg.state_dir / "credentials.json")
    cfg.save_ports()
    env = hali_env(cfg, creds)
    code = 0
    try:
        ensure_service(cfg, "redis", lambda: start_redis(cfg.redis_port, cfg.state_dir / "redis", persist=True))
        ensure_service(cfg, "label-studio", lambda: start_label_studio(
            cfg.ls_port, cfg.ls_data_dir, cfg.files_root, creds["username"], creds["password"],
            creds["token"]))
        ensure_service(cfg, "backend", lambda: start_backend(cfg, env))
        ensure_service(cfg, "worker", lambda: start_worker(cfg, env))
        slide, options = demo_slide(cfg)
        with step(f"hali preprocess {slide.name}"):
            subprocess.run(hali_argv("preprocess", str(slide), "--project", "HALI demo", *options),
                           env=env, cwd=REPO_ROOT, check=True)
    except StackError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        code = 1
    except subprocess.CalledProcessError as exc:
        is_hali = "ml_backend.cli" in " ".join(exc.cmd[:3])
        shown = " ".join(map(str, ["hali", *exc.cmd[3:]] if is_hali else exc.cmd))
        print(f"\nERROR: `{shown}` failed with exit code {exc.returncode} "
              "(its output is above); the services keep running", file=sys.stderr)
        code = 1
    print(f"\nup took {time.monotonic() - start:.1f} s")
    status(cfg)
    print(f"\nOpen {cfg.ls_url} and log in as {creds['username']} / {creds['password']}")
    print(f"Dashboard of a project: {cfg.backend_url}/dashboard/<project id>, "
          f"login hali / {creds['backend_password']} (after its first retrain)")
    print("Stop everything with: make down   (or: python scripts/stack.py down)")
    return code


def down(cfg: StackConfig) -> int:
    """Stop every service named by a pid file, newest first, and remove the pid files."""
    for name in reversed(SERVICES):
        pid = read_pid(cfg, name)
        if pid is None:
            continue
        with step(f"stop {name} (pid {pid})"):
            stop_pid(pid)
        cfg.pid_file(name).unlink(missing_ok=True)
    return 0


def status(cfg: StackConfig) -> int:
    """Print each service's pid and whether it answers; 0 if all run, 3 otherwise."""
    checks = {"redis": lambda: redis_ping(cfg.redis_port),
              "label-studio": lambda: _answers(f"{cfg.ls_url}/health"),
              "backend": lambda: _answers(f"{cfg.backend_url}/health"),
              "worker": lambda: True}
    where = {"redis": cfg.redis_url, "label-studio": cfg.ls_url, "backend": cfg.backend_url,
             "worker": str(cfg.log_file("worker"))}
    all_up = True
    for name in SERVICES:
        pid = read_pid(cfg, name)
        state = "stopped" if pid is None else ("up" if checks[name]() else "not answering")
        all_up &= state == "up"
        print(f"    {name:<13} {state:<14} pid {pid or '-':<8} {where[name]}")
    return 0 if all_up else 3


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python scripts/stack.py {'|'.join(commands)}", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](StackConfig.from_env())
    except StackError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
