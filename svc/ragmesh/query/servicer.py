"""QueryService: protos in, pipeline and queue calls, protos out. Errors go through the kit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ragmesh.kit import codec
from ragmesh.kit.config import QuerySettings
from ragmesh.kit.domain import document_id_problem
from ragmesh.kit.errors import InvalidArgument
from ragmesh.kit.jobqueue import JobQueue
from ragmesh.query.service import (
    AskPipeline,
    caller_tenant,
    validate_documents,
    validate_job_id,
)
from ragmesh.v1 import query_service_pb2, query_service_pb2_grpc

SERVICE_NAME = query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


DEFAULT_PAGE, MAX_PAGE = 20, 100  # ListIngestJobs


class QueryServicer(query_service_pb2_grpc.QueryServiceServicer):
    """Serves Ask from an :class:`AskPipeline`; Ingest, DeleteDocument and GetIngestJob from a
    :class:`JobQueue`. Each in the caller's tenant."""

    def __init__(self, settings: QuerySettings, pipeline: AskPipeline, queue: JobQueue) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.queue = queue

    def _tenant(self) -> str:
        return caller_tenant(self.settings.default_tenant)

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
        tenant = self._tenant()
        job_id = await self.queue.enqueue(tenant, docs)
        return query_service_pb2.IngestResponse(job_id=job_id, document_count=len(docs))

    async def GetIngestJob(
        self,
        request: query_service_pb2.GetIngestJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.GetIngestJobResponse:
        validate_job_id(request.job_id)
        tenant = self._tenant()
        return codec.job_to_proto(await self.queue.job(tenant, request.job_id))

    async def ListIngestJobs(
        self,
        request: query_service_pb2.ListIngestJobsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.ListIngestJobsResponse:
        size = request.page_size or DEFAULT_PAGE
        if size > MAX_PAGE:
            raise InvalidArgument("page_size", f"{size} exceeds the limit of {MAX_PAGE}")
        jobs = await self.queue.jobs(self._tenant(), size)
        return query_service_pb2.ListIngestJobsResponse(jobs=[codec.job_to_proto(j) for j in jobs])

    async def RetryIngestJob(
        self,
        request: query_service_pb2.RetryIngestJobRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.RetryIngestJobResponse:
        validate_job_id(request.job_id)
        tenant = self._tenant()
        job_id = await self.queue.retry(tenant, request.job_id)
        job = await self.queue.job(tenant, job_id)
        return query_service_pb2.RetryIngestJobResponse(
            job_id=job_id, document_count=job.documents_total
        )

    async def DeleteDocument(
        self,
        request: query_service_pb2.DeleteDocumentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> query_service_pb2.DeleteDocumentResponse:
        found = document_id_problem(request.document_id)
        if found is not None:
            raise InvalidArgument(*found)
        tenant = self._tenant()
        job_id = await self.queue.enqueue_delete(tenant, request.document_id)
        return query_service_pb2.DeleteDocumentResponse(job_id=job_id)


def register(
    settings: QuerySettings, pipeline: AskPipeline, queue: JobQueue
) -> Callable[[grpc.aio.Server], None]:
    """A ServiceSpec.register callback adding the servicer to a server."""

    def add(server: grpc.aio.Server) -> None:
        query_service_pb2_grpc.add_QueryServiceServicer_to_server(
            QueryServicer(settings, pipeline, queue), server
        )

    return add
