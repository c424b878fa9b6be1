# syntax=docker/dockerfile:1
#
# One image per service, all from this file. SERVICE_EXTRA names the pyproject extra(s) to
# install on top of the shared dependencies, so each image carries only what its service
# imports (pydicom only in the extractor; `storage-writer,gcs` adds google-cloud-storage):
#
#   docker build --build-arg SERVICE_EXTRA=extractor -t dicomflow/extractor .
#   docker run dicomflow/extractor run extractor
#
# The entry point is the `dicomflow` CLI: `run NAME`, `topics`, `migrate`, `apikey create ...`.
# docker-compose.yml builds every service this way.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The api image also carries the OHIF Viewer it serves at /viewer (ADR 0018):
#   docker build --build-arg SERVICE_EXTRA=api --build-arg VIEWER=ohif -t dicomflow/api .
ARG VIEWER=none

# --- the OHIF Viewer: @ohif/app's prebuilt files, by the script `make deps` runs -----------
FROM node:20-bookworm-slim AS viewer-ohif
COPY deploy/dev/ohif.sh /src/deploy/dev/ohif.sh
RUN bash /src/deploy/dev/ohif.sh /opt/ohif

# Every other image: no viewer.
FROM ${PYTHON_IMAGE} AS viewer-none
RUN mkdir -p /opt/ohif/dist

FROM viewer-${VIEWER} AS viewer

# --- builder: resolve and install into a self-contained virtualenv --------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never

# Same uv as the Makefile's development setup.
RUN pip install uv==0.13.9 \
 && uv venv /opt/venv --python /usr/local/bin/python3.11

WORKDIR /src
# Only what the package needs (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services

ARG SERVICE_EXTRA=api
# A regular (non-editable) install: the runtime image gets site-packages, not the sources.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python ".[${SERVICE_EXTRA}]"

# --- runtime: the virtualenv and a non-root user, nothing else ------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    OPS_PORT_FOR_HEALTHCHECK=8000

# Every named volume's mount point (docker-compose.yml: storage, archives, exports, staging)
# belongs to the service user, so a volume mounted there starts out writable by it (Docker
# copies the ownership into a new volume; a path the image lacks would be created root-owned).
# tests/unit/test_compose.py checks this against the compose file. /nas, /dcm4chee, /inbox
# and /etc/dicomflow/routing are mount points of host folders (bind mounts keep the host's owner).
RUN groupadd --gid 10001 dicomflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin dicomflow \
 && mkdir -p /app /data/storage /data/archives /data/exports /staging /nas /dcm4chee /inbox \
        /etc/dicomflow/routing \
 && chown dicomflow:dicomflow /app /data/storage /data/archives /data/exports /staging

# Same base image as the builder, so the venv's interpreter path is valid here too.
COPY --from=builder /opt/venv /opt/venv
# Empty unless built with VIEWER=ohif; the api finds it through API_VIEWER_DIR=/opt/ohif.
COPY --from=viewer /opt/ohif/dist /opt/ohif

WORKDIR /app
# Numeric, so orchestrators can verify runAsNonRoot.
USER 10001:10001

# `/health` of the service's ops server (the API's own port for the api), over HTTP, or HTTPS
# when the service has HTTPS_CERTFILE (libs/tools/healthcheck.py: standard library only; there
# is no curl in the slim image). Compose sets OPS_PORT_FOR_HEALTHCHECK per service.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "libs.tools.healthcheck"]

ENTRYPOINT ["dicomflow"]
CMD ["run", "api"]
