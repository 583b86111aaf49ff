"""gRPC implementations of the peer protocols in :mod:`ragmesh.kit.peers`.

Channels come from :func:`ragmesh.kit.channels.open_channel` (deadline derived from the
caller's, metadata propagation, retries for idempotent methods only). Status codes from a
peer are translated into domain errors here, in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from ragmesh.kit import codec
from ragmesh.kit.domain import (
    AskInput,
    ChunkRecord,
    Delta,
    DocumentIn,
    Done,
    Embedded,
    Hit,
    JobStatus,
    Matrix,
    Params,
    Purpose,
    SearchResult,
)
from ragmesh.kit.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    InvalidArgument,
    ModelMismatch,
    NotFound,
    Overloaded,
    RagmeshError,
)
from ragmesh.v1 import (
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    generation_service_pb2,
    generation_service_pb2_grpc,
    query_service_pb2,
    query_service_pb2_grpc,
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
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("embedding_model: "):
        return ModelMismatch(details)
    return DependencyUnavailable(f"{peer} {code.name.lower()}: {details}")


class EmbeddingClient:
    """Embedder over EmbeddingService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = embedding_service_pb2_grpc.EmbeddingServiceStub(channel)

    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Embedded:
        request = embedding_service_pb2.EmbedRequest(
            texts=list(texts),
            purpose=codec.purpose_to_proto(purpose),
        )
        try:
            reply = await self._stub.Embed(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "embedding") from None
        return Embedded(codec.matrix_from_proto(reply.embeddings), reply.model)


class RetrievalClient:
    """Retriever over RetrievalService."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)

    async def search(
        self,
        tenant: str,
        vector: Matrix,
        top_k: int,
        filter: Mapping[str, str],
        min_index_version: int = 0,
        model: str = "",
        text: str = "",
    ) -> SearchResult:
        request = retrieval_service_pb2.SearchRequest(
            queries=codec.matrix_to_proto(np.asarray(vector).reshape(1, -1)),
            top_k=top_k,
            filter=dict(filter),
            tenant=tenant,
            min_index_version=min_index_version,
            embedding_model=model,
            query_texts=[text] if text else None,
        )
        try:
            reply = await self._stub.Search(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "retrieval") from None
        hits = tuple(codec.hit_from_proto(p) for p in reply.results[0].passages)
        return SearchResult(hits, reply.index_version)

    async def upsert(self, tenant: str, chunks: Sequence[ChunkRecord], model: str = "") -> int:
        request = retrieval_service_pb2.UpsertRequest(
            embedding_model=model,
            chunks=[
                retrieval_service_pb2.Chunk(
                    chunk_id=c.chunk_id,
                    document_id=c.document_id,
                    text=c.text,
                    metadata=dict(c.metadata),
                    vector=np.ascontiguousarray(c.vector, dtype="<f4").tobytes(),
                )
                for c in chunks
            ],
            tenant=tenant,
        )
        try:
            reply = await self._stub.Upsert(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "retrieval") from None
        return reply.index_version

    async def delete(
        self, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> tuple[int, int]:
        request = retrieval_service_pb2.DeleteRequest(
            chunk_ids=list(chunk_ids), document_ids=list(document_ids), tenant=tenant
        )
        try:
            reply = await self._stub.Delete(request)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "retrieval") from None
        return reply.deleted_count, reply.index_version


class GenerationClient:
    """Generator over GenerationService; its stream deadline is ``stream_timeout``."""

    def __init__(self, channel: grpc.aio.Channel, stream_timeout: float) -> None:
        self._stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        self._timeout = stream_timeout

    async def generate(
        self,
        question: str,
        passages: Sequence[Hit],
        params: Params,
        question_vector: Embedded | None = None,
    ) -> AsyncIterator[Delta | Done]:
        request = generation_service_pb2.GenerateRequest(
            question=question,
            passages=codec.hits_to_proto(passages),
            params=codec.params_to_proto(params),
        )
        if question_vector is not None:
            request.question_embedding.CopyFrom(codec.matrix_to_proto(question_vector.vectors))
            request.question_embedding_model = question_vector.model
        call = self._stub.Generate(request, timeout=self._timeout)
        try:
            async for reply in call:
                if reply.HasField("done"):
                    d = reply.done
                    yield Done(
                        codec.finish_from_proto(d.finish_reason),
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


class QueryClient:
    """The QueryService as a client uses it (the CLI, the quality gate, the benchmarks):
    domain events in and out, errors translated into domain errors."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float = 60.0,
        token: str = "",
        api_key: str = "",
        routing: Mapping[str, str] | None = None,
    ) -> None:
        self._stub = query_service_pb2_grpc.QueryServiceStub(channel)
        self._timeout = timeout
        # an end user's bearer token, for the ingress gateway (none inside the mesh)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        # or a machine client's API key (x-api-key), which the gateway checks instead
        if api_key:
            self._metadata += (("x-api-key", api_key),)
        # routing headers the mesh acts on (x-ragmesh-canary: true reaches the canaries)
        self._metadata += tuple((routing or {}).items())

    async def ask(self, request: AskInput) -> AsyncIterator[codec.AskEvent]:
        """The Ask stream: Citations, deltas, then one AskDone."""
        call = self._stub.Ask(
            codec.ask_to_proto(request), timeout=self._timeout, metadata=self._metadata
        )
        try:
            async for reply in call:
                yield codec.ask_event_from_proto(reply)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "query") from None
        finally:
            call.cancel()  # the caller may stop early (citations are enough for the gate)

    async def _unary(self, rpc: Any, request: Any) -> Any:
        """One unary call with the client's timeout and token; errors as domain errors."""
        try:
            return await rpc(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "query") from None

    async def ingest(self, documents: Sequence[DocumentIn]) -> str:
        """Queue ``documents``; returns the job id."""
        request = query_service_pb2.IngestRequest(
            documents=[codec.document_to_proto(d) for d in documents]
        )
        reply = await self._unary(self._stub.Ingest, request)
        return str(reply.job_id)

    async def delete_document(self, document_id: str) -> str:
        """Queue the removal of one of the caller's documents; returns the job id."""
        request = query_service_pb2.DeleteDocumentRequest(document_id=document_id)
        reply = await self._unary(self._stub.DeleteDocument, request)
        return str(reply.job_id)

    async def jobs(self, page_size: int = 0) -> list[JobStatus]:
        """The caller's tenant's ingest jobs, newest first."""
        request = query_service_pb2.ListIngestJobsRequest(page_size=page_size)
        reply = await self._unary(self._stub.ListIngestJobs, request)
        return [codec.job_from_proto(j) for j in reply.jobs]

    async def retry(self, job_id: str) -> str:
        """Queue a job's failed documents again; returns the new job's id."""
        request = query_service_pb2.RetryIngestJobRequest(job_id=job_id)
        reply = await self._unary(self._stub.RetryIngestJob, request)
        return str(reply.job_id)

    async def job(self, job_id: str) -> JobStatus:
        """The progress of an Ingest or DeleteDocument call."""
        request = query_service_pb2.GetIngestJobRequest(job_id=job_id)
        return codec.job_from_proto(await self._unary(self._stub.GetIngestJob, request))
