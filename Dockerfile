# The flow-run image: what a docker or kubernetes work pool runs for every Cascade flow run.
#
#   docker build -t cascade-flows:dev .            # or let `prefect deploy` build it (docs/deploy-docker.md)
#
# Stage 1 installs the locked environment (uv.lock, without the dev group) with uv into
# /opt/cascade/.venv and checks that the dbt project parses; stage 2 copies that environment and
# the project code onto a clean base and runs as an unprivileged user. Workers start the container
# with `prefect flow-run execute` (the default command below); the deployments' pull step sets the
# working directory to /opt/cascade, where the entrypoints (flows/*.py) are.
#
# The base image must have the same Python at the same path in both stages (the environment's
# interpreter is a link to it). Override it with --build-arg PYTHON_IMAGE=... to use a mirror.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# the same uv as scripts/cascade.py pins, from the Python package index
ARG UV_VERSION=0.13.9
# extra dependency groups, e.g. "--group docker" for docker-compose's worker service
ARG UV_GROUPS=""
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/cascade/.venv
WORKDIR /opt/cascade
# dependencies first: this layer is reused until pyproject.toml or uv.lock change
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev ${UV_GROUPS} --no-install-project --python python3
COPY flows ./flows
COPY tasks ./tasks
COPY blocks ./blocks
COPY dbt ./dbt
COPY LICENSE ./LICENSE
# Parse the dbt project once at build time: a project that does not parse fails the image
# build, not the first flow run. (target/partial_parse.msgpack is kept, but dbt reuses it only
# when the profile's connection and vars hash the same; a per-branch Trino catalog does not.)
RUN DBT_SEND_ANONYMOUS_USAGE_STATS=false /opt/cascade/.venv/bin/dbt parse \
        --project-dir dbt --profiles-dir dbt --target-path /opt/cascade/dbt/target \
        --log-path /tmp/dbt-logs --target duckdb \
 && rm -rf /tmp/dbt-logs \
 && /opt/cascade/.venv/bin/python -m compileall -q flows tasks blocks

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cascade-flows" \
      org.opencontainers.image.description="Cascade's Prefect flows: Nightscout to an Iceberg lakehouse and clinical marts" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini as PID 1: forwards the worker's SIGTERM (cancellation, pod eviction) to the flow run
# and reaps dbt's and Prefect's child processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cascade \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cascade --shell /usr/sbin/nologin cascade
COPY --from=build --chown=root:root /opt/cascade /opt/cascade
# Everything a run may write goes under /tmp (scratch, gone with the container): the code and
# the environment stay read-only to the run. Nothing is handed to a later run through here:
# flows leave their results in the lakehouse, the object store or Prefect's result storage.
ENV PATH=/opt/cascade/.venv/bin:$PATH \
    PYTHONPATH=/opt/cascade \
    PYTHONUNBUFFERED=1 \
    CASCADE_PROFILE=stack \
    CASCADE_HOME=/tmp/cascade \
    DBT_PROJECT_DIR=/opt/cascade/dbt \
    DBT_PROFILES_DIR=/opt/cascade/dbt \
    DBT_SEND_ANONYMOUS_USAGE_STATS=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    PREFECT_HOME=/tmp/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
USER 10001:10001
WORKDIR /opt/cascade
ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["prefect", "flow-run", "execute"]
