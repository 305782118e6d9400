# syntax=docker/dockerfile:1
# The stage image: every Job the operator runs (`eft stage <name>`), torchrun for multi-node training.
# CUDA 12 runtime; PyTorch (CUDA 12.8 wheels), faiss-gpu, ONNX Runtime GPU, TensorRT and eft.
# Build from the repository root (see images/README.md):
#   docker build -f images/stages.Dockerfile -t ghcr.io/eft-ai/eft-stages:0.1.0 .

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
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
FROM ${CUDA_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="eft-stages" \
      org.opencontainers.image.description="eft pipeline stages (ingest, sdg, prepare, train, evaluate, export) on CUDA 12: PyTorch, faiss-gpu, ONNX Runtime GPU, TensorRT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/eft-ai/eft" \
      org.opencontainers.image.url="https://github.com/eft-ai/eft" \
      org.opencontainers.image.documentation="https://github.com/eft-ai/eft/blob/main/README.md" \
      org.opencontainers.image.vendor="eft" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:12.8.1-runtime-ubuntu24.04"

ARG DEBIAN_FRONTEND=noninteractive
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/eft \
    PATH=/opt/eft/bin:$PATH

# Ubuntu 24.04's CPython 3.12 (the interpreter the requirement locks are resolved for).
# Apt versions are not pinned: the archive drops superseded versions, so a pin breaks rebuilds;
# the base image tag fixes the release and every Python package is pinned in the lock.
# Non-root user: uid/gid 1000 (the operator's EFT_RUN_AS_USER), replacing Ubuntu's default `ubuntu`.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && groupadd --gid 1000 eft \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/eft --shell /usr/sbin/nologin eft \
 && python3.12 -m venv /opt/eft

# Dependencies first (largest, least often changed layer), TensorRT next, eft itself last.
COPY images/requirements/stages.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY images/requirements/tensorrt.txt /tmp/tensorrt.txt
RUN pip install --no-cache-dir -r /tmp/tensorrt.txt \
 && rm /tmp/tensorrt.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/eft-*.whl \
 && rm -rf /tmp/dist

USER 1000:1000
WORKDIR /home/eft
ENTRYPOINT ["eft"]
CMD ["--help"]
