# ragmesh CUDA images for GPU nodes: retrieval on faiss-gpu, generation on vLLM.
#
#   scripts/wheelhouse.sh cuda           # images/requirements-cuda.txt + ragmesh's wheel
#   docker build -f images/cuda.Dockerfile --target generation \
#     -t ghcr.io/ragmesh/generation-cuda:0.1.0 .
#
# The CUDA user-space libraries arrive as NVIDIA's wheels (torch, faiss-gpu-cu12, vllm pull
# them in), so the base is the same Python 3.11 image as the CPU build; the NVIDIA container
# toolkit mounts the driver at run time. Without a GPU the services still start: retrieval
# falls back to the CPU index and generation serves the extractive engine.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
WORKDIR /build
COPY images/requirements-cuda.txt images/prune-venv.sh /build/
ENV PYTHONPATH=/build/pip \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/build/wheels \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# ragmesh's wheel goes in with --no-deps: its declared faiss-cpu is replaced by faiss-gpu-cu12.
RUN --mount=type=bind,source=.build/wheelhouse/cuda,target=/build/wheels \
    python3 -m zipfile -e /build/wheels/pip-*.whl /build/pip \
 && python3 -m venv --without-pip /opt/ragmesh \
 && /opt/ragmesh/bin/python -m pip install -r requirements-cuda.txt \
 && /opt/ragmesh/bin/python -m pip install --no-deps /build/wheels/ragmesh-*.whl \
 && sh prune-venv.sh /opt/ragmesh

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/ragmesh/ragmesh
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.vendor="ragmesh" \
      org.opencontainers.image.description="ragmesh GPU services (CUDA 12, faiss-gpu, vLLM)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/ragmesh/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAGMESH_GRPC_PORT=50051 \
    RAGMESH_METRICS_PORT=9090
WORKDIR /tmp
EXPOSE 50051 9090
COPY --from=builder /opt/ragmesh /opt/ragmesh
USER 10001:10001

FROM runtime AS retrieval
LABEL org.opencontainers.image.title="ragmesh-retrieval-cuda"
ENV RAGMESH_INDEX_DIR=/var/lib/ragmesh/index
ENTRYPOINT ["/opt/ragmesh/bin/python", "-m", "ragmesh.retrieval"]

FROM runtime AS generation
LABEL org.opencontainers.image.title="ragmesh-generation-cuda"
ENTRYPOINT ["/opt/ragmesh/bin/python", "-m", "ragmesh.generation"]
