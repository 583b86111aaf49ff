"""GenerationService: protos in, service stream, protos out. Errors go through the kit's table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ragmesh.generation.service import GenerationService
from ragmesh.kit import codec
from ragmesh.kit.domain import Delta, Embedded
from ragmesh.v1 import (
    common_pb2,
    generation_service_pb2,
    generation_service_pb2_grpc,
)

SERVICE_NAME = generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


class GenerationServicer(generation_service_pb2_grpc.GenerationServiceServicer):
    """Serves Generate from a :class:`GenerationService`."""

    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def Generate(
        self,
        request: generation_service_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[generation_service_pb2.GenerateResponse]:
        passages = [codec.hit_from_proto(p) for p in request.passages]
        vector = None
        if request.HasField("question_embedding"):
            vector = Embedded(
                codec.one_vector_from_proto(request.question_embedding, "question_embedding"),
                request.question_embedding_model,
            )
        stream = self.service.generate(
            request.question, passages, codec.params_from_proto(request.params), vector
        )
        async for event in stream:
            if isinstance(event, Delta):
                yield generation_service_pb2.GenerateResponse(delta=event.text)
            else:
                yield generation_service_pb2.GenerateResponse(
                    done=generation_service_pb2.GenerateDone(
                        finish_reason=codec.finish_to_proto(event.finish),
                        usage=common_pb2.Usage(
                            prompt_tokens=event.prompt_tokens,
                            completion_tokens=event.completion_tokens,
                        ),
                        model=event.model,
                    )
                )


def register(service: GenerationService) -> Callable[[grpc.aio.Server], None]:
    """A ServiceSpec.register callback adding the servicer to a server."""

    def add(server: grpc.aio.Server) -> None:
        generation_service_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(service), server
        )

    return add
