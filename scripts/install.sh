#!/usr/bin/env bash
# Install what HALI needs on a Debian machine, idempotently:
#   - redis-server and PostgreSQL from Debian (and chromium, plus playwright in .venv, when HALI_WITH_CHROMIUM=1),
#     if missing (HALI_LS_DB=sqlite: no PostgreSQL);
#   - .venv     : torch + torchvision, then the project with its test extras (editable);
#   - .venv-ls  : Label Studio and gunicorn, in a venv of its own (it pins redis/rq versions the backend outgrows).
# A venv step is skipped when its stamp file matches (hash of pyproject.toml / the LS version).
# Environment: PYTHON (default python3), HALI_WITH_CHROMIUM=1, HALI_LS_DB (postgres|sqlite).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
LS_VERSION=1.23.2
LS_GUNICORN="gunicorn>=27,<28"  # Label Studio under gunicorn (scripts/services.py); 27 has --no-control-socket
PIP_QUIET=(-qq --disable-pip-version-check --no-input)  # -qq: errors only (this pip config warns per package)

step_start=0
step() { echo "==> $*"; step_start=$SECONDS; }
done_step() { echo "    done in $((SECONDS - step_start)) s"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then echo sudo; else
            echo "ERROR: installing Debian packages needs root (or sudo)" >&2; exit 1; fi
    fi
}

apt_packages=()
command -v redis-server >/dev/null || apt_packages+=(redis-server)
# Label Studio's database for `make up` (scripts/postgres.py runs its own cluster; the Debian service is not used).
if [ "${HALI_LS_DB:-postgres}" = postgres ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_packages+=(postgresql)
fi
if [ "${HALI_WITH_CHROMIUM:-0}" = 1 ]; then
    command -v chromium >/dev/null || apt_packages+=(chromium)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
    step "apt-get install ${apt_packages[*]}"
    SUDO="$(need_root)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    done_step
else
    echo "==> Debian packages: already installed"
fi

# The project venv: stamp = hash of pyproject.toml plus the torch pins.
project_stamp="$(cat pyproject.toml <(echo "torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION") \
    | sha256sum | cut -c1-16)"
if [ "$(cat .venv/.hali-stamp 2>/dev/null || true)" = "$project_stamp" ] && [ -x .venv/bin/python ]; then
    echo "==> .venv: up to date (stamp $project_stamp)"
else
    step ".venv: torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION, then -e '.[test,sim,encoders]'"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install "${PIP_QUIET[@]}" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    .venv/bin/python -m pip install "${PIP_QUIET[@]}" -e '.[test,sim,encoders]'
    echo "$project_stamp" > .venv/.hali-stamp
    done_step
fi

# Playwright drives Debian's chromium for bench/shoot_tasks.py (screenshots); it never downloads a browser.
if [ "${HALI_WITH_CHROMIUM:-0}" = 1 ] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
    step ".venv: playwright (for HALI_WITH_CHROMIUM=1)"
    .venv/bin/python -m pip install "${PIP_QUIET[@]}" playwright
    done_step
fi

# Label Studio's own venv: stamp = its version.
ls_stamp="label-studio==$LS_VERSION $LS_GUNICORN"
if [ "$(cat .venv-ls/.hali-stamp 2>/dev/null || true)" = "$ls_stamp" ] && [ -x .venv-ls/bin/label-studio ]; then
    echo "==> .venv-ls: up to date ($ls_stamp)"
else
    step ".venv-ls: $ls_stamp (about 2 min, 1 GB)"
    [ -x .venv-ls/bin/python ] || "$PYTHON" -m venv .venv-ls
    .venv-ls/bin/python -m pip install "${PIP_QUIET[@]}" "label-studio==$LS_VERSION" "$LS_GUNICORN"
    echo "$ls_stamp" > .venv-ls/.hali-stamp
    done_step
fi
