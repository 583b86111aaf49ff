"""One GenerationService.Generate call over real gRPC, collected: the deltas and the done."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from ragmesh.v1 import common_pb2, generation_service_pb2, generation_service_pb2_grpc


async def generate(
    port: int,
    question: str,
    passages: Sequence[common_pb2.Passage],
    timeout: float = 30.0,
    **params: object,
) -> tuple[list[str], generation_service_pb2.GenerateDone]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        request = generation_service_pb2.GenerateRequest(
            question=question,
            passages=passages,
            params=common_pb2.GenerationParams(**params),  # type: ignore[arg-type]
        )
        deltas, done = [], None
        async for reply in stub.Generate(request, timeout=timeout):
            if reply.HasField("done"):
                done = reply.done
            else:
                deltas.append(reply.delta)
    assert done is not None
    return deltas, done
