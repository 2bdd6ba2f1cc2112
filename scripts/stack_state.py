"""What ``scripts/stack.py`` keeps under ``.state/``: its configuration (ports, Label Studio's database, worker
counts, from ``HALI_*`` variables), the generated credentials, and one pid file per service.

Stdlib only, like the rest of ``scripts/``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scripts.services import LOOPBACK, REPO_ROOT, StackError, pid_alive

ADMIN_EMAIL = "admin@hali.local"


@dataclass(frozen=True)
class StackConfig:
    """Where ``up`` keeps its state and which loopback ports it uses."""

    state_dir: Path
    redis_port: int
    ls_port: int
    backend_port: int
    pg_port: int = 15432
    ls_db: str = "auto"  # postgres | sqlite | auto (postgres when installed)
    ls_workers: int = 2  # gunicorn workers of Label Studio (PostgreSQL only), 4 threads each
    backend_workers: int = 2  # gunicorn workers of `hali serve`, 4 threads each

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StackConfig:
        """Ports from the environment, else those the last ``up`` saved, else the defaults."""
        state_dir = Path(env.get("HALI_STATE_DIR", REPO_ROOT / ".state")).resolve()
        saved_path = state_dir / "ports.json"
        saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}

        def port(var: str, key: str, default: int) -> int:
            return int(env.get(var) or saved.get(key) or default)

        ls_db = env.get("HALI_LS_DB", "auto").strip().lower() or "auto"
        if ls_db not in ("auto", "postgres", "sqlite"):
            raise StackError(f"HALI_LS_DB={ls_db!r}: choose postgres, sqlite or auto (PostgreSQL when installed)")
        return cls(state_dir=state_dir, redis_port=port("HALI_REDIS_PORT", "redis", 16379),
                   ls_port=port("HALI_LS_PORT", "label-studio", 8080),
                   backend_port=port("HALI_BACKEND_PORT", "backend", 9090),
                   pg_port=port("HALI_PG_PORT", "postgres", 15432), ls_db=ls_db,
                   ls_workers=_positive(env, "HALI_LS_WORKERS", 2),
                   backend_workers=_positive(env, "HALI_BACKEND_WORKERS", 2))

    def save_ports(self) -> None:
        """Remember the ports, so ``status`` and the next ``up`` find the services again."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports = {"redis": self.redis_port, "label-studio": self.ls_port,
                 "backend": self.backend_port, "postgres": self.pg_port}
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
    def pg_data_dir(self) -> Path:
        return self.state_dir / "postgres" / "data"

    @property
    def files_root(self) -> Path:
        return self.state_dir / "files"

    def pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"


def _positive(env: Mapping[str, str], var: str, default: int) -> int:
    value = env.get(var) or str(default)
    if not value.isdigit() or int(value) < 1:
        raise StackError(f"{var}={value!r}: give a whole number of at least 1")
    return int(value)


# start order; down stops in reverse (the supervisor first, so nothing is restarted while stopping)
SERVICES = ("redis", "postgres", "label-studio", "backend", "worker", "supervisor")
SUPERVISED = ("backend", "worker")
# What each service's command line contains (any of): a pid file whose pid now names another program
# (the pid was reused after a reboot) is stale, and that program is never signalled.
_CMDLINE_MARKERS = {"redis": ("redis-server",), "postgres": ("bin/postgres",),
                    "label-studio": ("label-studio", "core.wsgi:application"),
                    "backend": ("ml_backend.cli",), "worker": ("ml_backend.cli",),
                    "supervisor": ("stack.py supervise",)}



def load_credentials(path: Path) -> dict[str, str]:
    """The admin e-mail, password and legacy token, and the backend's basic-auth password and webhook secret:
    made once and reused by every ``up`` (a file from an older ``up`` gains the keys it lacks)."""
    creds = json.loads(path.read_text()) if path.exists() else {}
    made = {"username": ADMIN_EMAIL, "password": secrets.token_urlsafe(12), "token": secrets.token_hex(20),
            "backend_password": secrets.token_urlsafe(16), "webhook_secret": secrets.token_urlsafe(16),
            "postgres_password": secrets.token_urlsafe(16)}
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


def _cmdline_has(pid: int, markers: tuple[str, ...]) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no /proc (macOS): trust the pid file
        return True
    text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return any(marker in text for marker in markers)


def write_pid(cfg: StackConfig, name: str, pid: int) -> None:
    cfg.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    cfg.pid_file(name).write_text(f"{pid}\n")


