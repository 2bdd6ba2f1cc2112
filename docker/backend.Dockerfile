# The HALI backend image: `hali serve` under gunicorn (the ML backend Label Studio calls) and `hali worker`
# (rq: retrains and queued preprocessing) run from this one image; compose picks the command.
#   docker build -f docker/backend.Dockerfile -t hali-backend .        (context: the repository root)
# BASE_IMAGE: python:3.11-slim, or a local Debian bookworm base with python3 (docker/local-base.sh) where no
# registry is reachable. TORCH_INDEX_URL: empty = PyPI, whose Linux torch wheel carries CUDA (GPU workers);
# https://download.pytorch.org/whl/cpu gives a CPU-only image about 4 GB smaller (docker/README.md).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HALI_DATA_DIR=/data \
    HALI_LS_FILES_ROOT=/files

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# docker/certs/ca-certificates.crt, when present, is the CA bundle pip must trust (a TLS-intercepting proxy).
COPY docker/certs/ /tmp/certs/
RUN python3 -m venv /opt/venv

# torch first, in a layer of its own: the largest and the least often changed.
# hadolint ignore=DL3013
RUN if [ -s /tmp/certs/ca-certificates.crt ]; then export PIP_CERT=/tmp/certs/ca-certificates.crt; fi; \
    pip install --no-compile ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md /src/
COPY adapters /src/adapters
COPY label_config /src/label_config
COPY preprocess /src/preprocess
COPY ml_backend /src/ml_backend
# DL3013: /src is this project, whose pyproject.toml pins what matters.
# hadolint ignore=DL3013
RUN if [ -s /tmp/certs/ca-certificates.crt ]; then export PIP_CERT=/tmp/certs/ca-certificates.crt; fi; \
    pip install --no-compile /src \
    && rm -rf /src /tmp/certs /root/.cache \
    && useradd --uid 1001 --create-home --shell /bin/bash hali \
    && mkdir -p /data /files /slides \
    && chown hali:hali /data /files

USER 1001
WORKDIR /home/hali
VOLUME ["/data", "/files"]
EXPOSE 9090
# The web server (`hali serve`: Flask under gunicorn); compose runs `hali worker` from the same image.
CMD ["sh", "-c", "exec hali serve --host ${HALI_BIND_HOST:-127.0.0.1} --port ${BACKEND_PORT:-9090} --workers ${HALI_WEB_WORKERS:-2} --threads 4"]
