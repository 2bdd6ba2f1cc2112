#!/bin/sh
# Start Label Studio 1.23 for compose, in the official image (heartexlabs/label-studio, mounted read-only) or
# the local one (label-studio.Dockerfile, baked in): migrations and the admin user with its legacy token
# (`label-studio init`, idempotent), then gunicorn on core.wsgi from the package directory, bound to
# ${LS_BIND_HOST}:${LS_PORT}. The development server that `label-studio start` runs is for one user only.
set -eu
label-studio init --quiet --enable-legacy-api-token --no-browser >/tmp/ls-init.log 2>&1 \
    || { cat /tmp/ls-init.log; exit 1; }
tail -n 3 /tmp/ls-init.log
cd "$(python3 -c 'import label_studio, os; print(os.path.dirname(label_studio.__file__))')"
export DJANGO_SETTINGS_MODULE=core.settings.label_studio
if ! command -v gunicorn >/dev/null; then  # an image without gunicorn: Label Studio's own (development) server
    echo "gunicorn is not installed in this image: starting label-studio's development server instead" >&2
    exec label-studio start --no-browser --internal-host "${LS_BIND_HOST:-127.0.0.1}" --port "${LS_PORT:-8080}"
fi
exec gunicorn core.wsgi:application --bind "${LS_BIND_HOST:-127.0.0.1}:${LS_PORT:-8080}" \
    --workers "${LS_WEB_WORKERS:-3}" --threads "${LS_WEB_THREADS:-4}" --timeout 120 --access-logfile -
