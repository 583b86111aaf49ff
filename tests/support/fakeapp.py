"""A scriptable gRPC application for the mesh tests: it answers every method path.

Requests and responses are raw bytes, so any ragmesh or health method can be called with an
empty message. By default a call succeeds (an empty reply, or an empty stream). A test can
script one method's next calls: fail with a status, hang, or stream slowly.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

STREAMING = {
    "/ragmesh.v1.QueryService/Ask",
    "/ragmesh.v1.GenerationService/Generate",
    "/grpc.health.v1.Health/Watch",
}

Action = Callable[[grpc.aio.ServicerContext], Any]


def fail(code: grpc.StatusCode) -> Action:
    async def act(context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, f"scripted {code.name}")

    return act


async def hang(context: grpc.aio.ServicerContext) -> None:
    await asyncio.sleep(3600)


def slow_stream(messages: int, interval: float) -> Action:
    """A stream of ``messages`` empty messages, one every ``interval`` seconds."""

    async def act(context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(messages):
            await asyncio.sleep(interval)
            yield b""

    return act  # type: ignore[return-value]


@dataclass
class FakeApp(grpc.GenericRpcHandler):
    """Records (path, caller identity) of every call that reached it."""

    name: str
    calls: list[tuple[str, str]] = field(default_factory=list)
    metadata: list[tuple[tuple[str, str], ...]] = field(default_factory=list)  # per call
    script: dict[str, deque[Action]] = field(default_factory=lambda: defaultdict(deque))
    server: grpc.aio.Server | None = None
    port: int = 0

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.calls if p == path)

    def _record(self, path: str, context: grpc.aio.ServicerContext) -> None:
        self.calls.append((path, self._caller(context)))
        self.metadata.append(tuple((k, str(v)) for k, v in context.invocation_metadata() or ()))

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        # The sidecar passes the verified peer identity on in x-forwarded-client-cert.
        for key, value in context.invocation_metadata() or ():
            if key == "x-forwarded-client-cert":
                for part in str(value).split(";"):
                    if part.startswith("URI="):
                        return part[4:]
        return ""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = details.method
        if path in STREAMING:

            async def stream(
                request: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                self._record(path, context)
                if self.script[path]:
                    result = self.script[path].popleft()(context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result
                return

            return grpc.unary_stream_rpc_method_handler(stream)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self._record(path, context)
            if self.script[path]:
                await self.script[path].popleft()(context)
            return b""

        return grpc.unary_unary_rpc_method_handler(unary)

    async def start(self) -> int:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
