"""GenerationService: protos in, service stream, protos out. Errors go through the kit's table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ragmesh.generation.params import Params
from ragmesh.generation.service import Delta, Finish, GenerationService, Passage
from ragmesh.v1 import (
    common_pb2,
    generation_service_pb2,
    generation_service_pb2_grpc,
)

FINISH_REASONS = {
    Finish.STOP: common_pb2.FINISH_REASON_STOP,
    Finish.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    Finish.CONTENT_FILTER: common_pb2.FINISH_REASON_CONTENT_FILTER,
}

SERVICE_NAME = generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


def params_from_proto(p: common_pb2.GenerationParams) -> Params:
    """The domain parameters of a GenerationParams message."""
    return Params(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=tuple(p.stop),
        seed=p.seed if p.HasField("seed") else None,
    )


class GenerationServicer(generation_service_pb2_grpc.GenerationServiceServicer):
    """Serves Generate from a :class:`GenerationService`."""

    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def Generate(
        self,
        request: generation_service_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[generation_service_pb2.GenerateResponse]:
        passages = [Passage(p.chunk_id, p.document_id, p.text) for p in request.passages]
        stream = self.service.generate(
            request.question, passages, params_from_proto(request.params)
        )
        async for event in stream:
            if isinstance(event, Delta):
                yield generation_service_pb2.GenerateResponse(delta=event.text)
            else:
                yield generation_service_pb2.GenerateResponse(
                    done=generation_service_pb2.GenerateDone(
                        finish_reason=FINISH_REASONS[event.finish],
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
