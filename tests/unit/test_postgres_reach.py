"""``make up`` checks that the user PostgreSQL runs as can reach the state dir before it starts a cluster there:
a checkout inside a mode-700 folder (root's home, ``mktemp -d``) is named with its fix, so ``auto`` falls back to
SQLite instead of failing."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from scripts.postgres import PostgresBinaries, unreachable


def _postgres_user() -> str:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no `postgres` system user on this machine (PostgreSQL is not installed)")
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user")
    return "postgres"


def test_a_folder_the_postgres_user_cannot_enter_is_named_with_its_fix(tmp_path: Path):
    binaries = PostgresBinaries(Path("/usr/lib/postgresql/15/bin"), _postgres_user())
    closed = tmp_path / "checkout"
    closed.mkdir(mode=0o700)
    problem = unreachable(binaries, closed / ".state" / "postgres" / "data")
    assert problem is not None and str(closed) in problem and f"chmod o+x {closed}" in problem
    closed.chmod(0o755)
    after = unreachable(binaries, closed / ".state" / "postgres" / "data")  # pytest's own tmp root may be 700
    assert after is None or f"chmod o+x {closed}`" not in after, "an opened folder is still named"


def test_running_as_ourselves_reaches_everything(tmp_path: Path):
    closed = tmp_path / "checkout"
    closed.mkdir(mode=0o700)
    assert unreachable(PostgresBinaries(Path("/usr/bin"), None), closed / "data") is None
