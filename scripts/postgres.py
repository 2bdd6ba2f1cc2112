"""A PostgreSQL cluster of our own for Label Studio, on a loopback port (Debian's PostgreSQL 15 binaries).

Stdlib only, like ``scripts/services.py``. The cluster lives in one data dir; its superuser ``hali`` has a
password (``.state/credentials.json`` under ``make up``) and is the only role; Label Studio's tables go in the
database ``labelstudio``. PostgreSQL refuses to run as root: run as root, every PostgreSQL program runs as the
``postgres`` system user, which then owns the data dir (its parent folders must let that user through).

    binaries = find_postgres()                                       # ServiceUnavailable if not installed
    proc = start_postgres(binaries, port, data_dir, password)        # initdb on first use, then `postgres`
    env = label_studio_db_env(port, password)                        # DJANGO_DB, POSTGRE_* for Label Studio
    stop_postgres(proc.pid)                                          # a fast shutdown (SIGINT)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from scripts.services import (
    LOOPBACK,
    ServiceUnavailable,
    StackError,
    died_message,
    port_in_use,
    spawn,
    stop_pid,
    stop_process,
)

PG_SUPERUSER = "hali"
PG_DATABASE = "labelstudio"
PG_SEARCH = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


@dataclass(frozen=True)
class PostgresBinaries:
    """Where ``initdb``, ``postgres``, ``pg_isready`` and ``createdb`` live, and who runs them."""

    bin_dir: Path
    run_as: str | None  # a system user to switch to (we are root), or None: ourselves

    def argv(self, program: str, *args: str) -> list[str]:
        return [str(self.bin_dir / program), *args]


def find_postgres(bin_dir: str | None = None) -> PostgresBinaries:
    """The PostgreSQL server binaries: ``bin_dir``, ``HALI_PG_BIN``, Debian's 15 (or 16, 17), or ``initdb`` on PATH.

    Raises ServiceUnavailable, naming the fix, when none is installed or root has no ``postgres`` user.
    """
    candidates = [bin_dir or os.environ.get("HALI_PG_BIN") or "", *PG_SEARCH]
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    found = next((Path(c) for c in candidates if c and (Path(c) / "initdb").exists()), None)
    if found is None:
        raise ServiceUnavailable("PostgreSQL is not installed (no initdb in HALI_PG_BIN or /usr/lib/postgresql/*/bin): "
                                 "run `apt-get install -y postgresql` (scripts/install.sh does), or set "
                                 "HALI_LS_DB=sqlite for Label Studio's embedded database")
    if os.geteuid() != 0:
        return PostgresBinaries(found, None)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable("PostgreSQL refuses to run as root and there is no `postgres` system user to run "
                                 "it as: install Debian's postgresql package, or set HALI_LS_DB=sqlite") from None
    return PostgresBinaries(found, "postgres")


def _run(binaries: PostgresBinaries, argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, user=binaries.run_as, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, cwd="/")
    if done.returncode != 0:
        raise StackError(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout


def _hand_over(binaries: PostgresBinaries, path: Path) -> None:
    """Give ``path`` to the user PostgreSQL runs as, and check that user can reach it."""
    if binaries.run_as is None:
        return
    shutil.chown(path, user=binaries.run_as, group=binaries.run_as)
    problem = unreachable(binaries, path)
    if problem:
        raise StackError(problem)


def unreachable(binaries: PostgresBinaries, path: Path) -> str | None:
    """Why the user PostgreSQL runs as cannot reach ``path`` (a folder on the way it may not enter), with the
    fix; None when it can."""
    if binaries.run_as is None:
        return None
    uid = pwd.getpwnam(binaries.run_as).pw_uid
    for parent in path.resolve().parents:
        if parent.exists() and os.stat(parent).st_uid != uid and not os.stat(parent).st_mode & 0o001:
            return (f"the `{binaries.run_as}` user cannot enter {parent} (mode "
                    f"{oct(os.stat(parent).st_mode & 0o777)}), so PostgreSQL cannot use {path}: "
                    f"`chmod o+x {parent}`, or move the state dir (HALI_STATE_DIR)")
    return None


def init_cluster(binaries: PostgresBinaries, data_dir: Path, password: str) -> bool:
    """``initdb`` a new cluster in ``data_dir`` with superuser ``hali`` / ``password`` (scram-sha-256 over TCP);
    False, doing nothing, when ``data_dir`` already holds one."""
    data_dir = Path(data_dir)
    if (data_dir / "PG_VERSION").exists():
        return False
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    _hand_over(binaries, data_dir)
    pwfile = data_dir.parent / f".{data_dir.name}-initdb-password"  # initdb wants an empty data dir
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _hand_over(binaries, pwfile)
    try:
        _run(binaries, binaries.argv("initdb", "-D", str(data_dir), "-U", PG_SUPERUSER, f"--pwfile={pwfile}",
                                     "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
                                     "--locale=C.UTF-8"))
    finally:
        pwfile.unlink(missing_ok=True)
    return True


def start_postgres(binaries: PostgresBinaries, port: int, data_dir: Path, password: str,
                   timeout_s: float = 60.0) -> subprocess.Popen:
    """Run ``postgres`` on loopback ``port`` in the foreground of its own session (``initdb`` first when
    ``data_dir`` is new; database ``labelstudio`` made then), logging to ``data_dir/../postgres.log``."""
    if port_in_use(port):
        raise StackError(f"port {port} is taken, so PostgreSQL cannot listen there: stop what uses it "
                         "or choose another port (HALI_PG_PORT)")
    data_dir = Path(data_dir)
    new = init_cluster(binaries, data_dir, password)
    argv = binaries.argv("postgres", "-D", str(data_dir), "-p", str(port), "-c", f"listen_addresses={LOOPBACK}",
                         "-c", "unix_socket_directories=", "-c", "max_connections=200")
    proc = spawn(argv, data_dir.parent / "postgres.log", cwd=Path("/"), name="postgres", user=binaries.run_as)
    try:
        wait_postgres(binaries, port, timeout_s, proc)
        if new:
            _run(binaries, binaries.argv("createdb", "-h", LOOPBACK, "-p", str(port), "-U", PG_SUPERUSER,
                                         PG_DATABASE), env={**os.environ, "PGPASSWORD": password})
    except StackError:
        stop_process(proc)
        raise
    return proc


def wait_postgres(binaries: PostgresBinaries, port: int, timeout_s: float,
                  proc: subprocess.Popen | None = None) -> float:
    """Poll ``pg_isready`` until the server accepts connections; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise StackError(died_message(proc, f"PostgreSQL accepted connections on port {port}"))
        ready = subprocess.run(binaries.argv("pg_isready", "-q", "-h", LOOPBACK, "-p", str(port)),
                               stdin=subprocess.DEVNULL, capture_output=True)
        if ready.returncode == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    raise StackError(f"PostgreSQL did not accept connections on port {port} within {timeout_s:.0f} s")


def stop_postgres(pid: int, timeout_s: float = 30.0) -> None:
    """A fast shutdown (SIGINT: clients are disconnected, nothing needs recovery), SIGKILL if it hangs."""
    stop_pid(pid, timeout_s, first_signal=signal.SIGINT)


def label_studio_db_env(port: int, password: str) -> dict[str, str]:
    """The variables that put Label Studio 1.23 on this cluster (core/settings/base.py reads them)."""
    return {"DJANGO_DB": "default", "POSTGRE_NAME": PG_DATABASE, "POSTGRE_USER": PG_SUPERUSER,
            "POSTGRE_PASSWORD": password, "POSTGRE_HOST": LOOPBACK, "POSTGRE_PORT": str(port)}
