# PostgreSQL 15 from Debian bookworm: the fallback where postgres:15 cannot be pulled (compose.local.yaml).
# Same interface as the official image for what compose uses: POSTGRES_USER/PASSWORD/DB on first start,
# PGDATA=/var/lib/postgresql/data, `postgres -c ...` as the command, pg_isready for the healthcheck.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY docker/postgres-entrypoint.sh /usr/local/bin/hali-postgres-entrypoint
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
ENTRYPOINT ["hali-postgres-entrypoint"]
CMD ["postgres"]
