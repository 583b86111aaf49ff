"""EmbeddingService: protos in, service call, protos out. Errors go through the kit's table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ragmesh.embedding.service import EmbeddingService
from ragmesh.kit import codec
from ragmesh.v1 import embedding_service_pb2, embedding_service_pb2_grpc

SERVICE_NAME = embedding_service_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


class EmbeddingServicer(embedding_service_pb2_grpc.EmbeddingServiceServicer):
    """Serves Embed from an :class:`EmbeddingService`."""

    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    async def Embed(
        self,
        request: embedding_service_pb2.EmbedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> embedding_service_pb2.EmbedResponse:
        purpose = codec.purpose_from_proto(request.purpose)
        vectors = await self.service.embed(request.texts, purpose)
        return embedding_service_pb2.EmbedResponse(
            embeddings=codec.matrix_to_proto(vectors), model=self.service.model_name
        )


def register(service: EmbeddingService) -> Callable[[grpc.aio.Server], None]:
    """A ServiceSpec.register callback adding the servicer to a server."""

    def add(server: grpc.aio.Server) -> None:
        embedding_service_pb2_grpc.add_EmbeddingServiceServicer_to_server(
            EmbeddingServicer(service), server
        )

    return add
