#!/usr/bin/env bash
# Build the local base image for machines that cannot pull from a registry:
#   debootstrap --variant=minbase bookworm (+ python3.11, venv, ca-certificates), then `docker import`.
# It stands in for python:3.11-slim and debian:bookworm-slim (BASE_IMAGE build arg of every Dockerfile here).
# Usage: docker/local-base.sh [IMAGE]   (default hali-base:bookworm; skipped when it exists)
# Environment: DEBIAN_MIRROR (default: the first deb.debian.org-style URI apt uses here), HALI_DOCKER_WORK
# (scratch dir, default /tmp/hali-docker-base). Needs root, debootstrap and a reachable docker daemon.
set -euo pipefail
IMAGE="${1:-hali-base:bookworm}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "==> base image $IMAGE: already there"; exit 0
fi
command -v debootstrap >/dev/null || { echo "ERROR: debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
mirror_from_apt() {  # the Debian mirror this machine's apt uses (deb822 or one-line sources)
    grep -rhoE '(URIs:|^deb) *https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | head -1
}
MIRROR="${DEBIAN_MIRROR:-$(mirror_from_apt || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
WORK="${HALI_DOCKER_WORK:-/tmp/hali-docker-base}"
ROOT="$WORK/rootfs"
rm -rf "$ROOT"; mkdir -p "$ROOT"
echo "==> debootstrap bookworm from $MIRROR into $ROOT"
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
echo "==> docker import $IMAGE"
tar -C "$ROOT" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$IMAGE" >/dev/null
rm -rf "$ROOT"
echo "    base image $IMAGE in $((SECONDS - start)) s"
