"""The HALI dev stack: redis, Label Studio, the ML backend and one rq worker, on loopback.

Stdlib only, so it runs before any venv exists and the integration-test fixtures can import it::

    python scripts/stack.py up       # start what is not running, then preprocess the demo slide
    python scripts/stack.py status
    python scripts/stack.py down

``up`` keeps its state under ``.state/`` (``HALI_STATE_DIR``): pid files, logs, the Label Studio
data dir, the files root that Label Studio serves, the embeddings store and ``credentials.json``.
Ports come from ``HALI_REDIS_PORT`` (16379), ``HALI_LS_PORT`` (8080) and ``HALI_BACKEND_PORT``
(9090); ``up`` saves them in ``ports.json`` for ``status`` and the next ``up``.

Exceptions::

    StackError(RuntimeError)      a port is taken, a process died or did not answer in time
    +-- ServiceUnavailable        a binary or venv is missing (tests skip, or fail under CI)
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
LS_STARTUP_TIMEOUT_S = 240.0  # a cold start runs every migration: 50-70 s on 2 cores
ADMIN_EMAIL = "admin@hali.local"
DEMO_CLASSES = "Positive,Negative"
DEMO_MPP = 0.25  # see scripts/demo_slide.py

# Loopback only: never send our health checks through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """A dev-stack process could not be started, died, or did not answer in time."""


class ServiceUnavailable(StackError):
    """A binary or venv the stack needs is not installed."""


# --- processes -------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def log_tail(path: Path | None, n_lines: int = 40) -> str:
    """The last lines of a process log, for error messages."""
    if path is None or not Path(path).exists():
        return "(no log)"
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n_lines:])


def spawn(argv: list[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, name: str | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own session (so it outlives us and its group can be stopped), logging
    stdout and stderr to ``log_path``. The Popen gets ``log_path`` and ``name`` attributes."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                                env=dict(env) if env is not None else None)
    proc.log_path = log_path
    proc.name = name or Path(argv[0]).name
    return proc


def _died_message(proc: subprocess.Popen, waiting_for: str) -> str:
    log_path = getattr(proc, "log_path", None)
    name = getattr(proc, "name", proc.args[0])
    return (f"{name} (pid {proc.pid}) exited with code {proc.returncode} before {waiting_for}; "
            f"last lines of {log_path}:\n{log_tail(log_path)}")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    """Poll ``url`` until it answers 200; return the seconds waited.

    Fails at once, with the log tail, if ``proc`` exits first; fails after ``timeout_s`` otherwise.
    """
    start = time.monotonic()
    last_error: object = None
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise StackError(_died_message(proc, f"{url} answered"))
        try:
            with _OPENER.open(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
                last_error = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            last_error = exc
        time.sleep(0.5)
    tail = log_tail(getattr(proc, "log_path", None)) if proc is not None else ""
    raise StackError(f"{url} did not answer 200 within {timeout_s:.0f} s "
                     f"(last error: {last_error}). {tail}")


def redis_ping(port: int, host: str = LOOPBACK) -> bool:
    """Whether a redis server answers PING on ``host:port`` (raw RESP, no redis-py needed)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_redis(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> float:
    """Poll until redis answers PING on ``port``; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise StackError(_died_message(proc, f"redis answered on port {port}"))
        if redis_ping(port):
            return time.monotonic() - start
        time.sleep(0.1)
    raise StackError(f"redis did not answer PING on port {port} within {timeout_s:.0f} s")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def stop_pid(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group ``pid`` leads (every process here starts its own session), then
    SIGKILL it if it is still alive after ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:  # reap it if it is our child, so it does not linger as a zombie
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop a process this Python started with :func:`spawn`, and its children."""
    if proc.poll() is None:
        stop_pid(proc.pid, timeout_s)
    proc.wait(timeout=5)


# --- services --------------------------------------------------------------------------------


def start_redis(port: int, workdir: Path, timeout_s: float = 20.0) -> subprocess.Popen:
    """A real ``redis-server`` on loopback ``port``, no persistence, logging to ``workdir``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not on PATH: run scripts/install.sh "
                                 "(apt-get install -y redis-server)")
    if port_in_use(port):
        raise StackError(f"port {port} is taken, so redis cannot listen there: stop what uses it "
                         "or choose another port (HALI_REDIS_PORT)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--bind", LOOPBACK]
    proc = spawn(argv, workdir / "redis.log")
    try:
        wait_redis(port, timeout_s, proc)
    except StackError:
        stop_process(proc)
        raise
    return proc


def label_studio_env(data_dir: Path, files_root: Path, username: str, password: str,
                     token: str) -> dict[str, str]:
    """The environment of a headless Label Studio 1.23 (see shared/LABEL_STUDIO_NOTES.md)."""
    env = dict(os.environ)
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        # Else LS refuses to call an ML backend or webhook on 127.0.0.1 (403).
        "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    })
    return env


def find_label_studio(ls_bin: Path | str | None = None) -> Path:
    """The ``label-studio`` executable: ``ls_bin``, ``HALI_LS_BIN``, or ``.venv-ls/bin``."""
    path = Path(ls_bin or os.environ.get("HALI_LS_BIN") or REPO_ROOT / ".venv-ls/bin/label-studio")
    if not path.exists():
        raise ServiceUnavailable(f"Label Studio is not installed at {path}: run scripts/install.sh "
                                 "(it makes .venv-ls with label-studio==1.23.2)")
    return path


def start_label_studio(port: int, data_dir: Path, files_root: Path, username: str, password: str,
                       token: str, ls_bin: Path | str | None = None,
                       timeout_s: float = LS_STARTUP_TIMEOUT_S) -> subprocess.Popen:
    """A real Label Studio on loopback ``port``, logging to ``data_dir/label-studio.log``.

    Returns once ``/health`` answers 200. The admin ``username`` (an e-mail) gets ``password`` and
    the legacy API ``token`` (40 hex chars) when the data dir is new.
    """
    binary = find_label_studio(ls_bin)
    if port_in_use(port):  # LS would silently move to the next free port
        raise StackError(f"port {port} is taken, so Label Studio cannot listen there: stop what "
                         "uses it or choose another port (HALI_LS_PORT)")
    data_dir, files_root = Path(data_dir), Path(files_root)
    data_dir.mkdir(parents=True, exist_ok=True)
    files_root.mkdir(parents=True, exist_ok=True)
    env = label_studio_env(data_dir, files_root, username, password, token)
    argv = [str(binary), "start", "--no-browser", "--internal-host", LOOPBACK, "--port", str(port)]
    proc = spawn(argv, data_dir / "label-studio.log", env=env)
    try:
        wait_http(f"http://{LOOPBACK}:{port}/health", timeout_s, proc)
    except StackError:
        stop_process(proc)
        raise
    return proc


def reset_label_studio_password(data_dir: Path, files_root: Path, username: str, password: str,
                                ls_bin: Path | str | None = None) -> None:
    """Set a user's password with ``label-studio reset_password``, against the server's data dir
    (it may be running). Label Studio's API cannot set another user's password."""
    binary = find_label_studio(ls_bin)
    # The admin variables only matter at first start; keep them harmless here.
    env = label_studio_env(Path(data_dir), Path(files_root), "", "", "")
    argv = [str(binary), "reset_password", "--username", username, "--password", password]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    if done.returncode != 0 or "successfully changed" not in output:
        raise StackError(f"label-studio reset_password for {username} failed "
                         f"(exit {done.returncode}):\n{output[-3000:]}")


# --- the stack: up / down / status -----------------------------------------------------------


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
    """The admin e-mail, password and legacy token, made once and reused by every ``up``."""
    if path.exists():
        return json.loads(path.read_text())
    creds = {"username": ADMIN_EMAIL, "password": secrets.token_urlsafe(12),
             "token": secrets.token_hex(20)}
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
                "HALI_REDIS_URL": cfg.redis_url, "HALI_BACKEND_URL": cfg.backend_url}
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
        raise StackError(_died_message(proc, "it began to work"))
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
        ensure_service(cfg, "redis", lambda: start_redis(cfg.redis_port, cfg.state_dir / "redis"))
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
