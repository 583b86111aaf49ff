"""A test GenerationService: every Generate streams ``--tokens`` deltas, one every
``--interval-ms``, each carrying the CLOCK_MONOTONIC time (ns) it was sent at, then done.
Clients on the same machine subtract that from their arrival time: the per-token delay.

    python -m bench.ticker --tokens 40 --interval-ms 13   # prints "listening PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ragmesh.v1 import common_pb2, generation_service_pb2, generation_service_pb2_grpc


class Ticker(generation_service_pb2_grpc.GenerationServiceServicer):
    def __init__(self, tokens: int, interval: float) -> None:
        self.tokens = tokens
        self.interval = interval

    async def Generate(
        self, request: generation_service_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[generation_service_pb2.GenerateResponse]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self.tokens):
            await asyncio.sleep(max(0.0, start + (i + 1) * self.interval - loop.time()))
            yield generation_service_pb2.GenerateResponse(delta=f"{time.monotonic_ns()} ")
        yield generation_service_pb2.GenerateResponse(
            done=generation_service_pb2.GenerateDone(
                finish_reason=common_pb2.FINISH_REASON_LENGTH,
                usage=common_pb2.Usage(prompt_tokens=1, completion_tokens=self.tokens),
                model="ticker",
            )
        )


async def serve(tokens: int, interval: float) -> None:
    server = grpc.aio.server()
    generation_service_pb2_grpc.add_GenerationServiceServicer_to_server(
        Ticker(tokens, interval), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening {port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--interval-ms", type=float, default=13.0)
    args = parser.parse_args()
    asyncio.run(serve(args.tokens, args.interval_ms / 1000))


if __name__ == "__main__":
    main()
