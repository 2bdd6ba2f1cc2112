"""The HALI dev stack: redis, Label Studio, the ML backend and one rq worker, on loopback.

Stdlib only, so it runs before any venv exists and the integration-test fixtures can import it::

    python scripts/stack.py up         # start what is not running, then preprocess the demo slide
    python scripts/stack.py status
    python scripts/stack.py down
    python scripts/stack.py supervise  # (run by `up`) restart the backend or the worker when one dies

Label Studio runs on a PostgreSQL cluster of our own under gunicorn (``HALI_LS_DB=postgres``; the default
``auto`` does so when PostgreSQL is installed and says so when it falls back), or on its embedded SQLite with
Django's development server (``HALI_LS_DB=sqlite``: quicker to start, but it serves one task to several
annotators at once). The backend runs under gunicorn (``HALI_BACKEND_WORKERS``, ``HALI_LS_WORKERS``).

``up`` keeps its state under ``.state/`` (``HALI_STATE_DIR``): pid files, logs, the Label Studio
data dir, the files root that Label Studio serves, the embeddings store and ``credentials.json``.
Ports come from ``HALI_REDIS_PORT`` (16379), ``HALI_LS_PORT`` (8080), ``HALI_BACKEND_PORT``
(9090) and ``HALI_PG_PORT`` (15432); ``up`` saves them in ``ports.json`` for ``status`` and the next ``up``.

Starting and stopping each service is ``scripts/services.py``, which the integration tests share.
"""

from __future__ import annotations

import functools
import http.client
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/stack.py`: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.postgres import (  # noqa: E402
    find_postgres,
    label_studio_db_env,
    start_postgres,
    stop_postgres,
    unreachable,
)
from scripts.services import (  # noqa: E402
    LOOPBACK,
    REPO_ROOT,
    ServiceUnavailable,
    StackError,
    died_message,
    port_in_use,
    redis_ping,
    spawn,
    start_label_studio,
    start_redis,
    stop_pid,
    stop_process,
    wait_http,
)
from scripts.stack_state import (  # noqa: E402
    SERVICES,
    SUPERVISED,
    StackConfig,
    load_credentials,
    read_pid,
    write_pid,
)
from scripts.supervisor import Supervisor, log_line, read_record  # noqa: E402

DEMO_CLASSES = "Positive,Negative"
DEMO_MPP = 0.25  # see scripts/demo_slide.py

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step and how long it took."""
    print(f"==> {title} ...", flush=True)
    start = time.monotonic()
    yield
    print(f"    {title}: {time.monotonic() - start:.1f} s", flush=True)


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
    _check_cli_imports(python)
    run_main = "import sys; from ml_backend.cli import main; sys.exit(main())"
    return [str(python), "-c", run_main, *args]


@functools.cache  # once per process: the import takes seconds, and the supervisor restarts often
def _check_cli_imports(python: Path) -> None:
    probe = subprocess.run([str(python), "-c", "import ml_backend.cli"], cwd=REPO_ROOT,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ServiceUnavailable(f"the hali CLI does not import with {python} "
                                 f"(`import ml_backend.cli` failed): run `make install`.\n"
                                 f"{probe.stderr.strip()[-1500:]}")


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
    argv = hali_argv("serve", "--host", LOOPBACK, "--port", str(cfg.backend_port),
                     "--workers", str(cfg.backend_workers))
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


def ensure_database(cfg: StackConfig, creds: Mapping[str, str]) -> dict[str, str] | None:
    """Start our PostgreSQL unless ``HALI_LS_DB=sqlite``; its variables for Label Studio, or None for SQLite.

    With ``auto`` (the default) and no PostgreSQL installed, or a state dir the ``postgres`` user cannot reach
    (a checkout inside a mode-700 home), say so and fall back to SQLite."""
    if cfg.ls_db == "sqlite":
        return None
    try:
        binaries = find_postgres()
        problem = unreachable(binaries, cfg.pg_data_dir)
        if problem:
            raise ServiceUnavailable(problem)
    except ServiceUnavailable as exc:
        if cfg.ls_db == "postgres":
            raise
        print(f"    NOTE: {exc}. Label Studio runs on SQLite with its development server: fine for one "
              "annotator; with several, some tasks are served to two people at once (README). "
              "HALI_LS_DB=postgres makes this an error instead.")
        return None
    ensure_service(cfg, "postgres", lambda: start_postgres(binaries, cfg.pg_port, cfg.pg_data_dir,
                                                           creds["postgres_password"]))
    return label_studio_db_env(cfg.pg_port, creds["postgres_password"])


def start_supervisor(cfg: StackConfig) -> subprocess.Popen:
    """``stack.py supervise`` in a process of its own, logging to ``logs/supervisor.log``."""
    argv = [sys.executable, str(REPO_ROOT / "scripts/stack.py"), "supervise"]
    proc = spawn(argv, cfg.log_file("supervisor"), env=os.environ, cwd=REPO_ROOT, name="supervisor")
    time.sleep(0.5)
    if proc.poll() is not None:
        raise StackError(died_message(proc, "it began to watch"))
    return proc


def supervise(cfg: StackConfig) -> int:
    """Restart the backend or the worker whenever one dies (``up`` runs this in the background)."""
    env = hali_env(cfg, load_credentials(cfg.state_dir / "credentials.json"))
    starters = {"worker": lambda: start_worker(cfg, env), "backend": lambda: start_backend(cfg, env)}
    supervisor = Supervisor(starters, read_pid=lambda name: read_pid(cfg, name),
                            write_pid=lambda name, pid: write_pid(cfg, name, pid),
                            record_path=cfg.state_dir / "supervisor.json", log=log_line)
    return supervisor.run()


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
        database = ensure_database(cfg, creds)
        ensure_service(cfg, "label-studio", lambda: start_label_studio(
            cfg.ls_port, cfg.ls_data_dir, cfg.files_root, creds["username"], creds["password"],
            creds["token"], database=database, gunicorn_workers=cfg.ls_workers if database else 0))
        ensure_service(cfg, "backend", lambda: start_backend(cfg, env))
        ensure_service(cfg, "worker", lambda: start_worker(cfg, env))
        ensure_service(cfg, "supervisor", lambda: start_supervisor(cfg))
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
            if name == "postgres":
                stop_postgres(pid)
            else:  # the supervisor may be starting a service: let it finish and record the pid
                stop_pid(pid, timeout_s=90 if name == "supervisor" else 15)
        cfg.pid_file(name).unlink(missing_ok=True)
    return 0


def status(cfg: StackConfig) -> int:
    """Print each service's pid and whether it answers; 0 if all run, 3 otherwise."""
    on_postgres = read_pid(cfg, "postgres") is not None
    checks = {"redis": lambda: redis_ping(cfg.redis_port), "postgres": lambda: port_in_use(cfg.pg_port),
              "label-studio": lambda: _answers(f"{cfg.ls_url}/health"),
              "backend": lambda: _answers(f"{cfg.backend_url}/health"),
              "worker": lambda: True, "supervisor": lambda: True}
    where = {"redis": cfg.redis_url, "postgres": f"{LOOPBACK}:{cfg.pg_port} (Label Studio's database)",
             "label-studio": cfg.ls_url + ("" if read_pid(cfg, "label-studio") is None  # stopped: no database to name
                                           else " (PostgreSQL, gunicorn)" if on_postgres else " (SQLite, dev server)"),
             "backend": cfg.backend_url, "worker": str(cfg.log_file("worker")),
             "supervisor": str(cfg.log_file("supervisor"))}
    restarts = read_record(cfg.state_dir / "supervisor.json")
    all_up = True
    for name in SERVICES:
        pid = read_pid(cfg, name)
        if name == "postgres" and pid is None and not on_postgres:
            continue  # Label Studio on SQLite: no PostgreSQL to report
        state = "stopped" if pid is None else ("up" if checks[name]() else "not answering")
        all_up &= state == "up"
        note = _restart_note(restarts.get(name)) if name in SUPERVISED else ""
        print(f"    {name:<13} {state:<14} pid {pid or '-':<8} {where[name]}{note}")
    return 0 if all_up else 3


def _restart_note(record: Mapping | None) -> str:
    if not record or not record.get("restarts"):
        return ""
    note = f"  (restarted {record['restarts']}x, last {record['last_restart']}"
    return note + (f"; last error: {record['last_error'][:120]})" if record.get("last_error") else ")")


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"up": up, "down": down, "status": status, "supervise": supervise}
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
