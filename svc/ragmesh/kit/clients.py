"""gRPC implementations of the peer protocols in :mod:`ragmesh.kit.peers`.

Channels come from :func:`ragmesh.kit.channels.open_channel` (deadline derived from the
caller's, metadata propagation, retries for idempotent methods only). Status codes from a
peer are translated into domain errors here, in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
import numpy as np

from ragmesh.embedding.batcher import Matrix
from ragmesh.embedding.model import Purpose
from ragmesh.generation.params import Params
from ragmesh.generation.service import Delta, Done, Finish
from ragmesh.kit.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    InvalidArgument,
    NotFound,
    Overloaded,
    RagmeshError,
)
from ragmesh.kit.peers import ChunkRecord, Embedded, Hit, SearchResult
from ragmesh.v1 import (
    common_pb2,
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    generation_service_pb2,
    generation_service_pb2_grpc,
    retrieval_service_pb2,
    retrieval_service_pb2_grpc,
)


def translate(error: grpc.aio.AioRpcError, peer: str) -> RagmeshError:
    """The domain error for a failed call to ``peer``."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, problem = details.partition(": ")
        return InvalidArgument(field, problem) if problem else InvalidArgument(peer, details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(f"{peer} overloaded: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{peer} did not answer within the deadline")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    return DependencyUnavailable(f"{peer} {code.name.lower()}: {details}")


def _matrix(batch: common_pb2.VectorBatch) -> Matrix:
    return np.frombuffer(batch.data, dtype="<f4").reshape(batch.count, batch.dimension)


class EmbeddingClient:
    """Embedder over EmbeddingService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = embedding_service_pb2_grpc.EmbeddingServiceStub(channel)

    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Embedded:
        request = embedding_service_pb2.EmbedRequest(
            texts=list(texts),
            purpose=embedding_service_pb2.EmbeddingPurpose.Name(purpose.value),
        )
        try:
            reply = await self._stub.Embed(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "embedding") from None
        return Embedded(_matrix(reply.embeddings), reply.model)


class RetrievalClient:
    """Retriever over RetrievalService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)

    async def search(
        self,
        vector: Matrix,
        top_k: int,
        filter: Mapping[str, str],
    ) -> SearchResult:
        v = np.ascontiguousarray(vector, dtype="<f4").reshape(1, -1)
        request = retrieval_service_pb2.SearchRequest(
            queries=common_pb2.VectorBatch(count=1, dimension=v.shape[1], data=v.tobytes()),
            top_k=top_k,
            filter=dict(filter),
        )
        try:
            reply = await self._stub.Search(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "retrieval") from None
        hits = tuple(
            Hit(p.chunk_id, p.document_id, p.text, p.score, dict(p.metadata))
            for p in reply.results[0].passages
        )
        return SearchResult(hits, reply.index_version)

    async def upsert(self, chunks: Sequence[ChunkRecord]) -> int:
        request = retrieval_service_pb2.UpsertRequest(
            chunks=[
                retrieval_service_pb2.Chunk(
                    chunk_id=c.chunk_id,
                    document_id=c.document_id,
                    text=c.text,
                    metadata=dict(c.metadata),
                    vector=np.ascontiguousarray(c.vector, dtype="<f4").tobytes(),
                )
                for c in chunks
            ]
        )
        try:
            reply = await self._stub.Upsert(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "retrieval") from None
        return reply.index_version

    async def delete(self, chunk_ids: Sequence[str]) -> int:
        try:
            reply = await self._stub.Delete(
                retrieval_service_pb2.DeleteRequest(chunk_ids=list(chunk_ids))
            )
        except grpc.aio.AioRpcError as e:
            raise translate(e, "retrieval") from None
        return reply.index_version


_FINISH = {
    common_pb2.FINISH_REASON_STOP: Finish.STOP,
    common_pb2.FINISH_REASON_LENGTH: Finish.LENGTH,
    common_pb2.FINISH_REASON_CONTENT_FILTER: Finish.CONTENT_FILTER,
}


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


class GenerationClient:
    """Generator over GenerationService; its stream deadline is ``stream_timeout``."""

    def __init__(self, channel: grpc.aio.Channel, stream_timeout: float) -> None:
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        self._timeout = stream_timeout

    async def generate(
        self, question: str, passages: Sequence[Hit], params: Params
    ) -> AsyncIterator[Delta | Done]:
        request = generation_service_pb2.GenerateRequest(
            question=question,
            passages=[
                common_pb2.Passage(
                    chunk_id=h.chunk_id,
                    document_id=h.document_id,
                    text=h.text,
                    score=h.score,
                    metadata=dict(h.metadata),
                )
                for h in passages
            ],
            params=params_to_proto(params),
        )
        call = self._stub.Generate(request, timeout=self._timeout)
        try:
            async for reply in call:
                if reply.HasField("done"):
                    d = reply.done
                    yield Done(
                        _FINISH.get(d.finish_reason, Finish.STOP),
                        d.usage.prompt_tokens,
                        d.usage.completion_tokens,
                        d.model,
                    )
                else:
                    yield Delta(reply.delta)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "generation") from None
        finally:
            call.cancel()  # no-op once finished; stops the generator when the caller left
