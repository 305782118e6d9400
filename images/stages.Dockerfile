# syntax=docker/dockerfile:1
# The stage image: every Job the operator runs (`eft stage <name>`), torchrun for multi-node training.
# Two flavours from one file (images/README.md): gpu (the default: PyTorch with its CUDA 12 wheels, faiss-gpu,
# ONNX Runtime GPU, TensorRT) and cpu (--build-arg LOCK=stages-cpu --build-arg TENSORRT=false: faiss-cpu,
# ONNX Runtime for CPU, no TensorRT), for kind, minikube or a CPU node pool.
# No CUDA base image: the CUDA libraries come with the PyPI wheels, the driver from the node.
# Build from the repository root (images/build.py, or see images/README.md):
#   docker build -f images/stages.Dockerfile -t ghcr.io/eft-ai/eft-stages:0.1.0 .

# A Debian 12 root with CPython 3.11 and its venv module (the interpreter the locks are resolved for);
# tests/cluster builds one from Debian packages (mmdebstrap) and passes it here.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- eft as a wheel (pure Python); build tools stay in this stage
FROM ${BASE_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY eft/ eft/
COPY stages/ stages/
COPY operator/ operator/
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-deps --wheel-dir /dist .

# ---- runtime
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG LOCK=stages
ARG TENSORRT=true

# Writes go to mounts the pod declares (the root filesystem is read-only): HOME and every cache under /tmp.
# NVIDIA_*: what the NVIDIA container runtime injects from the node's driver (CUDA base images set the same).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/eft \
    PATH=/opt/eft/bin:$PATH \
    HOME=/tmp \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Non-root user: uid/gid 1000 (the operator's EFT_RUN_AS_USER).
RUN groupadd --gid 1000 eft \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin eft \
 && python3 -m venv /opt/eft

# Dependencies first (largest, least often changed layer), TensorRT next, eft itself last.
# The pip cache is a build mount: warm rebuilds reuse wheels without keeping them in a layer. /root/.cache/pip
# is pip's default cache inside the build container (its user is root there), not a path of the build host;
# hadolint's DL3042 accepts a cache mount only at that path.
COPY images/requirements/${LOCK}.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY images/requirements/tensorrt.txt /tmp/tensorrt.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "${TENSORRT}" = true ]; then pip install -r /tmp/tensorrt.txt; fi \
 && rm /tmp/tensorrt.txt
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir --no-deps /tmp/dist/eft-*.whl \
 && rm -rf /tmp/dist

# Labels last: VERSION/REVISION/CREATED change every build and would otherwise invalidate the cached
# layers above (every RUN sees the build arguments declared before it).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="eft-stages" \
      org.opencontainers.image.description="eft pipeline stages (ingest, sdg, prepare, train, evaluate, export): PyTorch, faiss, ONNX Runtime; the gpu flavour adds CUDA 12 wheels and TensorRT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/eft-ai/eft" \
      org.opencontainers.image.url="https://github.com/eft-ai/eft" \
      org.opencontainers.image.documentation="https://github.com/eft-ai/eft/blob/main/README.md" \
      org.opencontainers.image.vendor="eft" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["eft"]
CMD ["--help"]
