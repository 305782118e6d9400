# syntax=docker/dockerfile:1
# The eft operator: `eft operator` (kopf) watching EmbeddingFinetune resources. Slim Python, no CUDA.
# Build from the repository root (see images/README.md):
#   docker build -f images/operator.Dockerfile -t ghcr.io/eft-ai/eft-operator:0.1.0 .

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

# ---- eft as a wheel (pure Python); build tools stay in this stage
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY eft/ eft/
COPY stages/ stages/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- runtime
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="eft-operator" \
      org.opencontainers.image.description="Kubernetes operator (kopf) that fine-tunes text-embedding models from EmbeddingFinetune resources" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/eft-ai/eft" \
      org.opencontainers.image.url="https://github.com/eft-ai/eft" \
      org.opencontainers.image.documentation="https://github.com/eft-ai/eft/blob/main/README.md" \
      org.opencontainers.image.vendor="eft" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/eft \
    PATH=/opt/eft/bin:$PATH

# Non-root user: uid/gid 1000, the same as the pods the operator creates (EFT_RUN_AS_USER).
RUN groupadd --gid 1000 eft \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/eft --shell /usr/sbin/nologin eft \
 && python -m venv /opt/eft

# Dependencies first (the locked set changes far less often than the source), then eft itself.
COPY images/requirements/operator.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/eft-*.whl \
 && rm -rf /tmp/dist

USER 1000:1000
WORKDIR /home/eft
# kopf's liveness endpoint (the chart's livenessProbe)
EXPOSE 8080
ENTRYPOINT ["eft"]
CMD ["operator", "--liveness", "http://0.0.0.0:8080/healthz"]
