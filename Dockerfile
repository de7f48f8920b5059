# Custody's processes (correlate, ingest, serve, migrate and the CLI) in one image.
# Build from the repository root:  docker build -t custody:0.1.0 .
# No configuration or secret is baked in: every setting is a CUSTODY_* environment
# variable given at run time (docs/operations.md, Configuration).

# ---- build: install the package and its dependencies into a virtualenv ---------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for a dependency that has no wheel for this platform; it stays in
# this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/custody
ENV PATH=/opt/custody/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY producers ./producers
COPY processors ./processors
COPY infra/__init__.py ./infra/__init__.py
COPY infra/clickhouse ./infra/clickhouse
COPY dashboards ./dashboards
# Not editable, no dev extras: the migrations (infra/clickhouse/*.sql), the Avro schemas
# and the web explorer (dashboards/explorer) are package data and land in site-packages.
# The base install is only the publishing SDK: the processors and the command come with
# the pipeline extra; the local broker's wheel (stack) is for `custody up` on a laptop.
RUN pip install --upgrade pip && pip install ".[pipeline]"

# ---- runtime: the virtualenv, a non-root user, nothing else -------------------------
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="custody" \
      org.opencontainers.image.description="Event-streaming provenance pipeline that proves what autonomous agents did." \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 custody \
    && useradd --system --uid 10001 --gid custody --home-dir /var/lib/custody \
       --create-home --shell /usr/sbin/nologin custody

COPY --from=build /opt/custody /opt/custody

ENV PATH=/opt/custody/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CUSTODY_HOME=/var/lib/custody

WORKDIR /var/lib/custody
USER custody:custody

# The query API (custody serve); the other roles listen on nothing.
EXPOSE 8470

ENTRYPOINT ["custody"]
CMD ["--help"]
