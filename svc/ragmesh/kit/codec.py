"""Proto messages ↔ the domain vocabulary of :mod:`ragmesh.kit.domain`, both directions, in
one place. Domain enums carry the proto enums' numbers (checked by a test), so enums convert
one way: by value. Servicers and clients call these; nothing else touches both worlds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import numpy as np

from ragmesh.kit.domain import (
    AskDone,
    AskInput,
    Citation,
    Citations,
    Delta,
    DocumentIn,
    Finish,
    Hit,
    JobState,
    JobStatus,
    Matrix,
    Outcome,
    Params,
    Purpose,
    Timings,
)
from ragmesh.kit.errors import InvalidArgument
from ragmesh.v1 import common_pb2, embedding_service_pb2, query_service_pb2


def purpose_from_proto(value: int) -> Purpose:
    """The purpose of an EmbedRequest; an unknown value is the caller's error."""
    try:
        return Purpose(value)
    except ValueError:
        raise InvalidArgument("purpose", f"unknown value {value}") from None


def purpose_to_proto(purpose: Purpose) -> embedding_service_pb2.EmbeddingPurpose:
    return cast(embedding_service_pb2.EmbeddingPurpose, purpose.value)


def finish_to_proto(finish: Finish) -> common_pb2.FinishReason:
    return cast(common_pb2.FinishReason, finish.value)


def finish_from_proto(value: int) -> Finish:
    """A peer's finish reason; one this version does not know reads as STOP."""
    try:
        return Finish(value)
    except ValueError:
        return Finish.STOP


def job_state_to_proto(state: JobState) -> query_service_pb2.IngestJobState:
    return cast(query_service_pb2.IngestJobState, state.value)


def params_from_proto(p: common_pb2.GenerationParams) -> Params:
    """The domain parameters of a GenerationParams message."""
    return Params(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=tuple(p.stop),
        seed=p.seed if p.HasField("seed") else None,
    )


def params_to_proto(params: Params) -> common_pb2.GenerationParams:
    """The GenerationParams message of domain parameters."""
    message = common_pb2.GenerationParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop),
    )
    if params.seed is not None:
        message.seed = params.seed
    return message


def hit_from_proto(p: common_pb2.Passage) -> Hit:
    return Hit(p.chunk_id, p.document_id, p.text, p.score, dict(p.metadata))


def hits_to_proto(hits: Iterable[Hit]) -> list[common_pb2.Passage]:
    return [
        common_pb2.Passage(
            chunk_id=h.chunk_id,
            document_id=h.document_id,
            text=h.text,
            score=h.score,
            metadata=dict(h.metadata),
        )
        for h in hits
    ]


def matrix_from_proto(batch: common_pb2.VectorBatch) -> Matrix:
    """The vectors of a VectorBatch (a view of its bytes, not validated)."""
    return np.frombuffer(batch.data, dtype="<f4").reshape(batch.count, batch.dimension)


def one_vector_from_proto(batch: common_pb2.VectorBatch, field: str) -> Matrix:
    """A VectorBatch that must hold exactly one finite vector: a (1, dimension) matrix;
    InvalidArgument naming ``field`` otherwise."""
    if batch.count != 1 or batch.dimension == 0:
        raise InvalidArgument(
            field, f"must hold one vector, not {batch.count} of {batch.dimension}"
        )
    if len(batch.data) != 4 * batch.dimension:
        raise InvalidArgument(
            field, f"data has {len(batch.data)} bytes, expected {4 * batch.dimension}"
        )
    vector = matrix_from_proto(batch)
    if not np.isfinite(vector).all():
        raise InvalidArgument(field, "contains NaN or infinity")
    return vector


def matrix_to_proto(vectors: Matrix) -> common_pb2.VectorBatch:
    v = np.ascontiguousarray(vectors, dtype="<f4").reshape(len(vectors), -1)
    return common_pb2.VectorBatch(count=v.shape[0], dimension=v.shape[1], data=v.tobytes())


AskEvent = Citations | Delta | AskDone


def ask_from_proto(r: query_service_pb2.AskRequest) -> AskInput:
    return AskInput(
        question=r.question,
        top_k=r.top_k,
        filter=dict(r.filter),
        params=params_from_proto(r.params),
        skip_cache=r.skip_cache,
        min_index_version=r.min_index_version,
    )


def ask_to_proto(a: AskInput) -> query_service_pb2.AskRequest:
    return query_service_pb2.AskRequest(
        question=a.question,
        top_k=a.top_k,
        filter=dict(a.filter),
        params=params_to_proto(a.params),
        skip_cache=a.skip_cache,
        min_index_version=a.min_index_version,
    )


def ask_event_to_proto(event: AskEvent) -> query_service_pb2.AskResponse:
    if isinstance(event, Delta):
        return query_service_pb2.AskResponse(delta=event.text)
    if isinstance(event, Citations):
        return query_service_pb2.AskResponse(
            citations=query_service_pb2.Citations(
                citations=[
                    query_service_pb2.Citation(
                        marker=c.marker,
                        chunk_id=c.chunk_id,
                        document_id=c.document_id,
                        score=c.score,
                        snippet=c.snippet,
                        metadata=c.metadata,
                    )
                    for c in event.citations
                ]
            )
        )
    t = event.timings
    return query_service_pb2.AskResponse(
        done=query_service_pb2.AskDone(
            finish_reason=finish_to_proto(event.finish),
            usage=common_pb2.Usage(
                prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens
            ),
            timings=query_service_pb2.Timings(
                embed_ms=t.embed_ms,
                search_ms=t.search_ms,
                first_token_ms=t.first_token_ms,
                total_ms=t.total_ms,
            ),
            cache_hit=event.cache_hit,
            index_version=event.index_version,
            outcome=cast(query_service_pb2.AnswerOutcome, event.outcome.value),
            groundedness=event.groundedness,
        )
    )


def ask_event_from_proto(r: query_service_pb2.AskResponse) -> AskEvent:
    kind = r.WhichOneof("event")
    if kind == "citations":
        return Citations(
            tuple(
                Citation(c.marker, c.chunk_id, c.document_id, c.score, c.snippet, dict(c.metadata))
                for c in r.citations.citations
            )
        )
    if kind == "delta":
        return Delta(r.delta)
    d, t = r.done, r.done.timings
    return AskDone(
        finish_from_proto(d.finish_reason),
        d.usage.prompt_tokens,
        d.usage.completion_tokens,
        Timings(t.embed_ms, t.search_ms, t.first_token_ms, t.total_ms),
        d.cache_hit,
        d.index_version,
        Outcome(d.outcome) if d.outcome else Outcome.ANSWERED,
        d.groundedness,
    )


def document_to_proto(d: DocumentIn) -> query_service_pb2.Document:
    return query_service_pb2.Document(
        document_id=d.document_id,
        title=d.title,
        text=d.text,
        metadata=dict(d.metadata),
        source=d.source,
        content=d.content,
        media_type=d.media_type,
    )


def document_from_proto(d: query_service_pb2.Document) -> DocumentIn:
    return DocumentIn(
        d.document_id, d.title, d.text, dict(d.metadata), d.source, d.content, d.media_type
    )


def job_to_proto(job: JobStatus) -> query_service_pb2.GetIngestJobResponse:
    return query_service_pb2.GetIngestJobResponse(
        job_id=job.job_id,
        state=job_state_to_proto(job.state),
        documents_total=job.documents_total,
        documents_done=job.documents_done,
        documents_failed=job.documents_failed,
        chunks_done=job.chunks_done,
        chunks_failed=job.chunks_failed,
        last_error=job.last_error,
        index_version=job.index_version,
        failed_documents=[
            query_service_pb2.FailedDocument(document_id=d, error=e)
            for d, e in job.failed_documents
        ],
    )


def job_from_proto(r: query_service_pb2.GetIngestJobResponse) -> JobStatus:
    try:
        state = JobState(r.state)
    except ValueError:
        state = JobState.RUNNING  # a state this version does not know: not finished
    return JobStatus(
        r.job_id,
        state,
        r.documents_total,
        r.documents_done,
        r.documents_failed,
        r.chunks_done,
        r.chunks_failed,
        r.last_error,
        r.index_version,
        tuple((d.document_id, d.error) for d in r.failed_documents),
    )
