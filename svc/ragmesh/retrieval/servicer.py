"""RetrievalService: protos in, service call, protos out. Errors go through the kit's table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ragmesh.retrieval.service import RetrievalService
from ragmesh.retrieval.store import ChunkIn
from ragmesh.v1 import retrieval_service_pb2 as pb
from ragmesh.v1 import retrieval_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name
KINDS = {"flat": pb.INDEX_KIND_FLAT, "hnsw": pb.INDEX_KIND_HNSW, "ivf": pb.INDEX_KIND_IVF}
Context = grpc.aio.ServicerContext[Any, Any]


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    """Serves the RetrievalService RPCs from a :class:`RetrievalService`."""

    def __init__(self, service: RetrievalService) -> None:
        self.service = service

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        q = request.queries
        results, version = await self.service.search(
            request.tenant,
            q.count,
            q.dimension,
            q.data,
            request.top_k,
            request.filter,
            request.min_index_version,
            request.embedding_model,
            request.query_texts,
        )
        response = pb.SearchResponse(index_version=version)
        for hits in results:
            passages = response.results.add().passages
            for h in hits:
                # add() with keywords is the cheapest way to build a message; an empty map
                # is left out (passing {} costs a merge per passage)
                passages.add(
                    chunk_id=h.chunk_id,
                    document_id=h.document_id,
                    text=h.text,
                    score=h.score,
                    metadata=h.metadata or None,
                )
        return response

    async def Upsert(self, request: pb.UpsertRequest, context: Context) -> pb.UpsertResponse:
        chunks = [
            ChunkIn(c.chunk_id, c.document_id, c.text, dict(c.metadata), c.vector)
            for c in request.chunks
        ]
        count, version = await self.service.upsert(request.tenant, chunks, request.embedding_model)
        return pb.UpsertResponse(upserted_count=count, index_version=version)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        count, version = await self.service.delete(
            request.tenant, list(request.chunk_ids), list(request.document_ids)
        )
        return pb.DeleteResponse(deleted_count=count, index_version=version)

    async def GetIndexInfo(
        self, request: pb.GetIndexInfoRequest, context: Context
    ) -> pb.GetIndexInfoResponse:
        info = await self.service.info()
        return pb.GetIndexInfoResponse(
            count=info.count,
            dimension=info.dimension,
            kind=KINDS[info.kind],
            device=info.device,
            index_version=info.version,
            embedding_model=info.model,
        )


def register(service: RetrievalService) -> Callable[[grpc.aio.Server], None]:
    """A ServiceSpec.register callback adding the servicer to a server."""

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(service), server)

    return add
