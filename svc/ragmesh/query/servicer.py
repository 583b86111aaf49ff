"""QueryService: protos in, pipeline and queue calls, protos out. Errors go through the kit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ragmesh.kit import codec
from ragmesh.kit.config import QuerySettings
from ragmesh.kit.jobqueue import JobQueue
from ragmesh.query.service import AskPipeline, validate_documents, validate_job_id
from ragmesh.v1 import query_service_pb2, query_service_pb2_grpc

SERVICE_NAME = query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """Serves Ask from an :class:`AskPipeline` and Ingest/GetIngestJob from a :class:`JobQueue`."""

    def __init__(self, settings: QuerySettings, pipeline: AskPipeline, queue: JobQueue) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.queue = queue

    async def Ask(
        self,
        request: query_service_pb2.AskRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[query_service_pb2.AskResponse]:
        async for event in self.pipeline.ask(codec.ask_from_proto(request)):
            yield codec.ask_event_to_proto(event)

    async def Ingest(
        self,
        request: query_service_pb2.IngestRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.IngestResponse:
        docs = [codec.document_from_proto(d) for d in request.documents]
        validate_documents(docs, self.settings.max_documents, self.settings.max_document_chars)
        job_id = await self.queue.enqueue(docs)
        return query_service_pb2.IngestResponse(job_id=job_id, document_count=len(docs))

    async def GetIngestJob(
        self,
        request: query_service_pb2.GetIngestJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.GetIngestJobResponse:
        validate_job_id(request.job_id)
        return codec.job_to_proto(await self.queue.job(request.job_id))


def register(
    settings: QuerySettings, pipeline: AskPipeline, queue: JobQueue
) -> Callable[[grpc.aio.Server], None]:
    """A ServiceSpec.register callback adding the servicer to a server."""

    def add(server: grpc.aio.Server) -> None:
        query_service_pb2_grpc.add_QueryServiceServicer_to_server(
            QueryServicer(settings, pipeline, queue), server
        )

    return add
