# syntax=docker/dockerfile:1
# The serving image: `eft serve` answering POST /v1/embeddings from an exported model. No PyTorch.
# Two flavours from one file (images/README.md): gpu (the default: ONNX Runtime GPU with its CUDA 12 and
# cuDNN 9 wheels, the CUDA / TensorRT execution providers, TensorRT) and cpu (--build-arg LOCK=server-cpu
# --build-arg TENSORRT=false: ONNX Runtime for CPU).
# Build from the repository root (images/build.py, or see images/README.md):
#   docker build -f images/server.Dockerfile -t ghcr.io/eft-ai/eft-server:0.1.0 .

# A Debian 12 root with CPython 3.11 and its venv module (see stages.Dockerfile).
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
ARG LOCK=server
ARG TENSORRT=true

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

# Dependencies first, TensorRT runtime next, eft itself last.
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
LABEL org.opencontainers.image.title="eft-server" \
      org.opencontainers.image.description="eft serve: OpenAI-compatible /v1/embeddings on ONNX Runtime; the gpu flavour adds CUDA 12 / cuDNN 9 wheels and TensorRT" \
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
EXPOSE 8000
ENTRYPOINT ["eft"]
CMD ["serve", "--model", "/workspace/export", "--host", "0.0.0.0", "--port", "8000"]
