# Redis from Debian bookworm: the fallback where the official redis image cannot be pulled
# (compose.local.yaml). Compose passes the command line (append-only file in /data).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server=5:7.0.* \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
CMD ["redis-server", "--appendonly", "yes", "--dir", "/data"]
