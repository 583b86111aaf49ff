"""Proto messages ↔ the domain vocabulary of :mod:`ragmesh.kit.domain`, both directions, in
one place. Domain enums carry the proto enums' numbers (checked by a test), so enums convert
one way: by value. Servicers and clients call these; nothing else touches both worlds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import numpy as np

from ragmesh.kit.domain import Finish, Hit, JobState, Matrix, Params, Purpose
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


def matrix_to_proto(vectors: Matrix) -> common_pb2.VectorBatch:
    v = np.ascontiguousarray(vectors, dtype="<f4").reshape(len(vectors), -1)
    return common_pb2.VectorBatch(count=v.shape[0], dimension=v.shape[1], data=v.tobytes())
