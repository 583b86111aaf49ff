from google.api import annotations_pb2 as _annotations_pb2
from ragmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnswerOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_OUTCOME_UNSPECIFIED: _ClassVar[AnswerOutcome]
    ANSWER_OUTCOME_ANSWERED: _ClassVar[AnswerOutcome]
    ANSWER_OUTCOME_NO_ANSWER: _ClassVar[AnswerOutcome]
    ANSWER_OUTCOME_FILTERED: _ClassVar[AnswerOutcome]

class IngestJobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INGEST_JOB_STATE_UNSPECIFIED: _ClassVar[IngestJobState]
    INGEST_JOB_STATE_QUEUED: _ClassVar[IngestJobState]
    INGEST_JOB_STATE_RUNNING: _ClassVar[IngestJobState]
    INGEST_JOB_STATE_SUCCEEDED: _ClassVar[IngestJobState]
    INGEST_JOB_STATE_FAILED: _ClassVar[IngestJobState]
ANSWER_OUTCOME_UNSPECIFIED: AnswerOutcome
ANSWER_OUTCOME_ANSWERED: AnswerOutcome
ANSWER_OUTCOME_NO_ANSWER: AnswerOutcome
ANSWER_OUTCOME_FILTERED: AnswerOutcome
INGEST_JOB_STATE_UNSPECIFIED: IngestJobState
INGEST_JOB_STATE_QUEUED: IngestJobState
INGEST_JOB_STATE_RUNNING: IngestJobState
INGEST_JOB_STATE_SUCCEEDED: IngestJobState
INGEST_JOB_STATE_FAILED: IngestJobState

class AskRequest(_message.Message):
    __slots__ = ("question", "top_k", "filter", "params", "skip_cache", "min_index_version")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SKIP_CACHE_FIELD_NUMBER: _ClassVar[int]
    MIN_INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    question: str
    top_k: int
    filter: _containers.ScalarMap[str, str]
    params: _common_pb2.GenerationParams
    skip_cache: bool
    min_index_version: int
    def __init__(self, question: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Mapping[str, str]] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., skip_cache: _Optional[bool] = ..., min_index_version: _Optional[int] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("marker", "chunk_id", "document_id", "score", "snippet", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MARKER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    marker: int
    chunk_id: str
    document_id: str
    score: float
    snippet: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, marker: _Optional[int] = ..., chunk_id: _Optional[str] = ..., document_id: _Optional[str] = ..., score: _Optional[float] = ..., snippet: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Citations(_message.Message):
    __slots__ = ("citations",)
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    def __init__(self, citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("embed_ms", "search_ms", "first_token_ms", "total_ms")
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    embed_ms: float
    search_ms: float
    first_token_ms: float
    total_ms: float
    def __init__(self, embed_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class AskDone(_message.Message):
    __slots__ = ("finish_reason", "usage", "timings", "cache_hit", "index_version", "outcome", "groundedness")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    GROUNDEDNESS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    timings: Timings
    cache_hit: bool
    index_version: int
    outcome: AnswerOutcome
    groundedness: float
    def __init__(self, finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., index_version: _Optional[int] = ..., outcome: _Optional[_Union[AnswerOutcome, str]] = ..., groundedness: _Optional[float] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("citations", "delta", "done")
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    citations: Citations
    delta: str
    done: AskDone
    def __init__(self, citations: _Optional[_Union[Citations, _Mapping]] = ..., delta: _Optional[str] = ..., done: _Optional[_Union[AskDone, _Mapping]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("document_id", "title", "text", "metadata", "source", "content", "media_type")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    text: str
    metadata: _containers.ScalarMap[str, str]
    source: str
    content: bytes
    media_type: str
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., source: _Optional[str] = ..., content: _Optional[bytes] = ..., media_type: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("job_id", "document_count")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    document_count: int
    def __init__(self, job_id: _Optional[str] = ..., document_count: _Optional[int] = ...) -> None: ...

class DeleteDocumentRequest(_message.Message):
    __slots__ = ("document_id",)
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    def __init__(self, document_id: _Optional[str] = ...) -> None: ...

class DeleteDocumentResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetIngestJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetIngestJobResponse(_message.Message):
    __slots__ = ("job_id", "state", "documents_total", "documents_done", "documents_failed", "chunks_done", "chunks_failed", "last_error", "index_version", "failed_documents")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_DONE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    FAILED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: IngestJobState
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks_done: int
    chunks_failed: int
    last_error: str
    index_version: int
    failed_documents: _containers.RepeatedCompositeFieldContainer[FailedDocument]
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[IngestJobState, str]] = ..., documents_total: _Optional[int] = ..., documents_done: _Optional[int] = ..., documents_failed: _Optional[int] = ..., chunks_done: _Optional[int] = ..., chunks_failed: _Optional[int] = ..., last_error: _Optional[str] = ..., index_version: _Optional[int] = ..., failed_documents: _Optional[_Iterable[_Union[FailedDocument, _Mapping]]] = ...) -> None: ...

class FailedDocument(_message.Message):
    __slots__ = ("document_id", "error")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    error: str
    def __init__(self, document_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ListIngestJobsRequest(_message.Message):
    __slots__ = ("page_size",)
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    def __init__(self, page_size: _Optional[int] = ...) -> None: ...

class ListIngestJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[GetIngestJobResponse]
    def __init__(self, jobs: _Optional[_Iterable[_Union[GetIngestJobResponse, _Mapping]]] = ...) -> None: ...

class RetryIngestJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RetryIngestJobResponse(_message.Message):
    __slots__ = ("job_id", "document_count")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    document_count: int
    def __init__(self, job_id: _Optional[str] = ..., document_count: _Optional[int] = ...) -> None: ...
