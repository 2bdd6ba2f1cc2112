"""Starting, probing and stopping the services HALI runs on loopback: redis-server, Label Studio, processes.

Stdlib only, so it runs before any venv exists. Used by ``scripts/stack.py`` (``make up``/``make down``) and by
the integration-test fixtures, which start their own services on free ports.

Exceptions::

    StackError(RuntimeError)      a port is taken, a process died or did not answer in time
    +-- ServiceUnavailable        a binary or venv is missing (tests skip, or fail under CI)
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
LS_STARTUP_TIMEOUT_S = 240.0  # a cold start runs every migration: 50-70 s on 2 cores

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
          cwd: Path | None = None, name: str | None = None, user: str | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own session (so it outlives us and its group can be stopped), logging
    stdout and stderr to ``log_path``, as system ``user`` when given (we are root). The Popen gets
    ``log_path`` and ``name`` attributes."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                                env=dict(env) if env is not None else None, user=user)
    proc.log_path = log_path
    proc.name = name or Path(argv[0]).name
    return proc


def died_message(proc: subprocess.Popen, waiting_for: str) -> str:
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
            raise StackError(died_message(proc, f"{url} answered"))
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
            raise StackError(died_message(proc, f"redis answered on port {port}"))
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


def stop_pid(pid: int, timeout_s: float = 15.0, first_signal: int = signal.SIGTERM) -> None:
    """Send ``first_signal`` (SIGTERM) to the process group ``pid`` leads (every process here starts its
    own session), then SIGKILL it if it is still alive after ``timeout_s``."""
    for sig, wait_s in ((first_signal, timeout_s), (signal.SIGKILL, 5.0)):
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


def start_redis(port: int, workdir: Path, timeout_s: float = 20.0, persist: bool = False) -> subprocess.Popen:
    """A real ``redis-server`` on loopback ``port``, logging to ``workdir``; with ``persist`` an append-only
    file in ``workdir`` keeps the label mirror, statuses and queued jobs over a restart (``make up``)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not on PATH: run scripts/install.sh "
                                 "(apt-get install -y redis-server)")
    if port_in_use(port):
        raise StackError(f"port {port} is taken, so redis cannot listen there: stop what uses it "
                         "or choose another port (HALI_REDIS_PORT)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--save", "", "--appendonly", "yes" if persist else "no",
            "--dir", str(workdir), "--bind", LOOPBACK]
    proc = spawn(argv, workdir / "redis.log")
    try:
        wait_redis(port, timeout_s, proc)
    except StackError:
        stop_process(proc)
        raise
    return proc


PREDICTIONS_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"


def label_studio_env(data_dir: Path, files_root: Path, username: str, password: str,
                     token: str, database: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a headless Label Studio 1.23 (see shared/LABEL_STUDIO_NOTES.md); ``database``:
    the ``DJANGO_DB``/``POSTGRE_*`` variables of a PostgreSQL (``scripts/postgres.py``), else SQLite in
    ``data_dir``."""
    env = dict(os.environ)
    env.update(database or {})
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
        # Importing predictions recounts every task of the project without it (16 s per retrain at 5,000
        # tasks); with it, only the tasks that got one (docs/predictions.md).
        PREDICTIONS_IMPORT_FLAG: "true",
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
                       timeout_s: float = LS_STARTUP_TIMEOUT_S, database: Mapping[str, str] | None = None,
                       gunicorn_workers: int = 0) -> subprocess.Popen:
    """A real Label Studio on loopback ``port``, logging to ``data_dir/label-studio.log``.

    Returns once ``/health`` answers 200. The admin ``username`` (an e-mail) gets ``password`` and
    the legacy API ``token`` (40 hex chars) when the database is new. ``database``: see
    :func:`label_studio_env`. ``gunicorn_workers`` > 0: migrations and the admin first (``label-studio
    init``), then gunicorn with that many workers of 4 threads, instead of Django's development server.
    """
    binary = find_label_studio(ls_bin)
    if port_in_use(port):  # LS would silently move to the next free port
        raise StackError(f"port {port} is taken, so Label Studio cannot listen there: stop what "
                         "uses it or choose another port (HALI_LS_PORT)")
    data_dir, files_root = Path(data_dir), Path(files_root)
    data_dir.mkdir(parents=True, exist_ok=True)
    files_root.mkdir(parents=True, exist_ok=True)
    env = label_studio_env(data_dir, files_root, username, password, token, database)
    if gunicorn_workers > 0:
        argv = label_studio_gunicorn_argv(binary, env, data_dir / "label-studio.log", port, gunicorn_workers)
    else:
        argv = [str(binary), "start", "--no-browser", "--internal-host", LOOPBACK, "--port", str(port)]
    proc = spawn(argv, data_dir / "label-studio.log", env=env, name="label-studio")
    try:
        wait_http(f"http://{LOOPBACK}:{port}/health", timeout_s, proc)
    except StackError:
        stop_process(proc)
        raise
    return proc


def label_studio_gunicorn_argv(binary: Path, env: dict[str, str], log_path: Path, port: int,
                               workers: int) -> list[str]:
    """Migrate and make the admin (``label-studio init``, logged to ``log_path``), then return the argv of
    gunicorn serving ``core.wsgi:application`` from the installed ``label_studio`` package. ``env`` gains
    ``DJANGO_SETTINGS_MODULE``. Needs gunicorn in Label Studio's venv (scripts/install.sh puts it there)."""
    python = binary.parent / "python"
    probe = subprocess.run([str(python), "-c", "import gunicorn, label_studio, os; "
                            "print(os.path.dirname(label_studio.__file__))"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if probe.returncode != 0:
        raise ServiceUnavailable(f"gunicorn is not installed next to Label Studio ({python}): run scripts/install.sh, "
                                 f"or `{python} -m pip install gunicorn`.\n{probe.stderr.strip()[-500:]}")
    package_dir = probe.stdout.strip()
    try:
        with open(log_path, "ab") as log:  # a cold database: every migration, 1-4 min on 2 busy cores
            init = subprocess.run([str(binary), "init", "--no-browser", "--quiet"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=2 * LS_STARTUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise StackError(f"`label-studio init` (migrations) did not finish within {2 * LS_STARTUP_TIMEOUT_S:.0f} s; "
                         f"last lines of {log_path}:\n{log_tail(log_path)}") from None
    if init.returncode != 0:
        raise StackError(f"`label-studio init` (migrations) failed with exit code {init.returncode}; "
                         f"last lines of {log_path}:\n{log_tail(log_path)}")
    env["DJANGO_SETTINGS_MODULE"] = "core.settings.label_studio"
    # gthread workers: Label Studio's requests block on the database; a long import or export may take minutes.
    # Keep-alive 20 s, not gunicorn's 2 s: a client reusing a connection the server just closed gets a reset.
    return [str(python), "-m", "gunicorn", "--chdir", package_dir, "--bind", f"{LOOPBACK}:{port}",
            "--workers", str(workers), "--threads", "4", "--worker-class", "gthread", "--timeout", "300",
            "--graceful-timeout", "10", "--keep-alive", "20", "--access-logfile", "-", "--no-control-socket",
            "core.wsgi:application"]


def reset_label_studio_password(data_dir: Path, files_root: Path, username: str, password: str,
                                ls_bin: Path | str | None = None, database: Mapping[str, str] | None = None) -> None:
    """Set a user's password with ``label-studio reset_password``, against the server's data dir or
    ``database`` (it may be running). Label Studio's API cannot set another user's password."""
    binary = find_label_studio(ls_bin)
    # The admin variables only matter at first start; keep them harmless here.
    env = label_studio_env(Path(data_dir), Path(files_root), "", "", "", database)
    # "--password=PW", not "--password PW": a generated password may start with "-", which argparse takes for an option
    argv = [str(binary), "reset_password", f"--username={username}", f"--password={password}"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    if done.returncode != 0 or "successfully changed" not in output:
        raise StackError(f"label-studio reset_password for {username} failed "
                         f"(exit {done.returncode}):\n{output[-3000:]}")


# --- the stack: up / down / status -----------------------------------------------------------
