# Label Studio 1.23.2 from PyPI: the fallback where heartexlabs/label-studio:1.23.2 cannot be pulled
# (compose.local.yaml selects it). Same user (1001), paths (/label-studio/data) and start script as compose
# uses with the official image.   docker build -f docker/label-studio.Dockerfile .   (context: repo root)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/ls/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY docker/certs/ /tmp/certs/
RUN if [ -s /tmp/certs/ca-certificates.crt ]; then export PIP_CERT=/tmp/certs/ca-certificates.crt; fi; \
    python3 -m venv /opt/ls \
    && pip install --no-compile label-studio==1.23.2 gunicorn==27.0.1 \
    && rm -rf /tmp/certs /root/.cache \
    && useradd --uid 1001 --create-home --home-dir /label-studio --shell /bin/bash labelstudio \
    && mkdir -p /label-studio/data /files \
    && chown -R labelstudio:labelstudio /label-studio /files

COPY docker/label-studio-start.sh /label-studio/deploy/hali-start.sh
USER 1001
WORKDIR /label-studio
VOLUME ["/label-studio/data"]
EXPOSE 8080
CMD ["/label-studio/deploy/hali-start.sh"]
