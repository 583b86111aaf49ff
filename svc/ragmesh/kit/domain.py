"""The vocabulary that crosses a wire, as the services see it. No grpc here.

One type per concept: what to embed (:class:`Purpose`, :data:`Matrix`), a retrieved or
given chunk (:class:`Hit`), a chunk to write (:class:`ChunkRecord`), sampling parameters
(:class:`Params`, validated here), a generation stream (:class:`Delta`, then one
:class:`Done` with its :class:`Finish`) and an Ask (:class:`AskInput` in; :class:`Citations`,
deltas, then one :class:`AskDone` out). :mod:`ragmesh.kit.codec` converts each to and from
its proto message, both directions, in one place.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ragmesh.kit.errors import InvalidArgument, quoted

Matrix = npt.NDArray[np.float32]


class Purpose(enum.Enum):
    """What texts are embedded for; models with query/document prompts use the matching one
    (values match the proto's EmbeddingPurpose)."""

    UNSPECIFIED = 0
    QUERY = 1
    DOCUMENT = 2


@dataclass(frozen=True)
class Hit:
    """A chunk as retrieval returns it and generation quotes it."""

    chunk_id: str
    document_id: str
    text: str
    score: float = 0.0
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query vector and the index version they came from."""

    hits: tuple[Hit, ...]
    index_version: int


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk to upsert, with its vector."""

    chunk_id: str
    document_id: str
    text: str
    metadata: Mapping[str, str]
    vector: Matrix


@dataclass(frozen=True)
class Embedded:
    """Vectors (one row per text) and the model that made them."""

    vectors: Matrix
    model: str


class JobState(enum.Enum):
    """Where an ingest job is (values match the proto's IngestJobState)."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4


class Finish(enum.Enum):
    """Why a generation ended (values match the proto's FinishReason)."""

    STOP = 1
    LENGTH = 2
    CONTENT_FILTER = 3


#: the answer when the documents hold none (the relevance floor, or an engine that found
#: nothing to say in the passages)
NO_ANSWER = "The indexed documents do not contain an answer to this question."


class Outcome(enum.Enum):
    """Whether an Ask was answered from the documents (values match AnswerOutcome)."""

    ANSWERED = 1
    NO_ANSWER = 2
    FILTERED = 3


@dataclass(frozen=True)
class Delta:
    """Text to send to the client."""

    text: str


@dataclass(frozen=True)
class Done:
    """The last event of every generation stream."""

    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    model: str


MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64


@dataclass(frozen=True)
class Params:
    """Sampling parameters of one request; 0 means "the service default" where noted."""

    max_tokens: int = 0  # 0: RAGMESH_GEN_DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.0  # 0: 1.0 (no nucleus cut)
    stop: tuple[str, ...] = ()
    seed: int | None = None


def validate_params(params: Params, field: str = "params", max_tokens: int | None = None) -> None:
    """Raise InvalidArgument naming the first bad field; ``max_tokens`` is the upper limit."""
    if max_tokens is not None and params.max_tokens > max_tokens:
        raise InvalidArgument(
            f"{field}.max_tokens", f"{params.max_tokens} exceeds the limit of {max_tokens}"
        )
    if not math.isfinite(params.temperature) or not 0.0 <= params.temperature <= 2.0:
        raise InvalidArgument(f"{field}.temperature", "must be between 0 and 2")
    if not math.isfinite(params.top_p) or not 0.0 <= params.top_p <= 1.0:
        raise InvalidArgument(f"{field}.top_p", "must be between 0 and 1")
    if len(params.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(f"{field}.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    for i, stop in enumerate(params.stop):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument(f"{field}.stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters")


@dataclass(frozen=True)
class AskInput:
    """One question."""

    question: str
    top_k: int = 0
    filter: Mapping[str, str] = field(default_factory=dict)
    params: Params = Params()
    skip_cache: bool = False
    #: read your writes: answer from an index of at least this version (0: any)
    min_index_version: int = 0


@dataclass(frozen=True)
class Citation:
    """A retrieved passage as the client sees it; ``marker`` is the ``[n]`` in the answer."""

    marker: int
    chunk_id: str
    document_id: str
    score: float
    snippet: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Citations:
    """The first event of every Ask stream."""

    citations: tuple[Citation, ...]


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent per stage."""

    embed_ms: float
    search_ms: float
    first_token_ms: float
    total_ms: float


@dataclass(frozen=True)
class AskDone:
    """The last event of every Ask stream."""

    finish: Finish
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    cache_hit: bool
    index_version: int
    outcome: Outcome = Outcome.ANSWERED
    groundedness: float = 0.0


@dataclass(frozen=True)
class DocumentIn:
    """A document to ingest."""

    document_id: str
    title: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    content: bytes = b""  # a file instead of text (its type in media_type)
    media_type: str = ""


#: the types of file an Ingest document may give as content
MEDIA_TYPES = (
    "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "text/plain",
    "text/markdown",
)


@dataclass(frozen=True)
class JobStatus:
    """Progress of one Ingest call."""

    job_id: str
    state: JobState
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks_done: int
    chunks_failed: int
    last_error: str
    #: the index version the job's writes reached (an Ask with it sees them); 0: none yet
    index_version: int = 0
    #: (document id, error) of each document that failed
    failed_documents: tuple[tuple[str, str], ...] = ()


_DOCUMENT_ID = re.compile(r"[^\s#]{1,256}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: the tenant of data written before tenants existed, and the usual RAGMESH_DEFAULT_TENANT
DEFAULT_TENANT = "default"
_JOB_ID = re.compile(r"[0-9a-f]{32}")
MAX_METADATA = 32  # entries of a document's or a chunk's metadata


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the form Ingest hands out (32 lowercase hex digits)."""
    return _JOB_ID.fullmatch(value) is not None


def tenant_problem(tenant: str) -> str | None:
    """What is wrong with a tenant name, or None. A tenant is 1-128 letters, digits, '.',
    '_' or '-', starting with a letter or digit; it scopes every chunk, search, cache key
    and job, and is never empty (no call means "all tenants")."""
    if not tenant:
        return "is required: every chunk and search belongs to one tenant"
    if not _TENANT.fullmatch(tenant):
        return "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def document_id_problem(document_id: str) -> tuple[str, str] | None:
    """("document_id", problem) when ``document_id`` is not a valid document id, or None."""
    if not _DOCUMENT_ID.fullmatch(document_id):
        return "document_id", "must be 1-256 characters without whitespace or '#'"
    return None


def document_problem(d: DocumentIn) -> tuple[str, str] | None:
    """(field, problem) of the first thing wrong with one document, or None. Checked where
    documents enter (query's Ingest) and again where they leave the queue (the worker)."""
    found = document_id_problem(d.document_id)
    if found is not None:
        return found
    if len(d.title) > 1000:
        return "title", "longer than 1000 characters"
    if d.content or d.media_type:
        if d.text:
            return "text", "give text or content, not both"
        if d.media_type not in MEDIA_TYPES:
            return "media_type", f"must be one of {', '.join(MEDIA_TYPES)}"
        if not d.content:
            return "content", "must not be empty"
    elif not d.text.strip():
        return "text", "must not be empty"
    if len(d.source) > 2048:
        return "source", "longer than 2048 characters"
    found = metadata_problem(d.metadata)
    return None if found is None else (f"metadata{found[0]}", found[1])


def metadata_problem(metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """("", problem) or ("[key]", problem) for metadata over the limits, or None: the same
    rule for a document's metadata and a chunk's."""
    if len(metadata) > MAX_METADATA:
        return "", f"more than {MAX_METADATA} entries"
    for k, v in metadata.items():
        if not k or len(k) > 128 or len(v) > 1024:
            return f"[{quoted(k)}]", "keys need 1-128 characters, values at most 1024"
    return None
