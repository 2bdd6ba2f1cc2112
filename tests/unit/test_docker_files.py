"""The deployment files in docker/ without a daemon: the compose files against the Compose specification
(check-jsonschema's vendored schema), every Dockerfile through hadolint, and docker/.env.example against
the variables compose.yaml reads. Both linters come with the `test` extra; a missing one skips with a
reason, and fails under CI=true. The full build-and-run check is `make docker-test` (docker/README.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
COMPOSE_FILES = sorted(DOCKER_DIR.glob("compose*.yaml"))
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
# Pinning every apt package version (DL3008) would break the build on each Debian point release.
HADOLINT_IGNORED = ("DL3008",)


def _tool(name: str) -> str:
    """The linter next to this interpreter (the venv's bin) or on PATH; skip (fail under CI) when missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed: pip install -e '.[test]' (make install) brings it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)


def test_docker_dir_holds_compose_files_and_dockerfiles():
    assert [p.name for p in COMPOSE_FILES] == ["compose.local.yaml", "compose.yaml"]
    assert {p.name for p in DOCKERFILES} >= {"backend.Dockerfile", "label-studio.Dockerfile"}


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(compose_file):
    done = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose_file)])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    ignores = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    done = _run([_tool("hadolint"), "--no-color", "--failure-threshold", "warning", *ignores, str(dockerfile)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_env_example_names_every_variable_compose_reads():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (DOCKER_DIR / "compose.yaml").read_text()))
    example = (DOCKER_DIR / ".env.example").read_text()
    named = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used - named == set(), f"docker/.env.example lacks {sorted(used - named)}"
