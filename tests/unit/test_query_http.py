"""The query service's HTTP face over a real socket, with a scripted pipeline: a client that
leaves mid-stream ends its Ask, and an error after the first byte is a last SSE event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import httpx

from ragmesh.kit.domain import AskDone, AskInput, Citations, Delta, Finish, Timings
from ragmesh.kit.errors import DependencyUnavailable
from ragmesh.query import http
from tests.conftest import settings_for

BODY = {"model": "ragmesh", "messages": [{"role": "user", "content": "q"}], "stream": True}


class Pipeline:
    """Citations, then after ``first`` seconds a delta every 10 ms for ``deltas`` deltas (then
    done or ``fail``)."""

    def __init__(self, deltas: int, fail: Exception | None = None, first: float = 0.0) -> None:
        self.deltas, self.fail, self.first = deltas, fail, first
        self.sent = 0
        self.closed = asyncio.Event()

    async def ask(self, request: AskInput) -> AsyncGenerator[Citations | Delta | AskDone, None]:
        try:
            yield Citations(())
            await asyncio.sleep(self.first)  # a slow first token (a long prompt's prefill)
            for _ in range(self.deltas):
                await asyncio.sleep(0.01)
                self.sent += 1
                yield Delta(" word")
            if self.fail is not None:
                raise self.fail
            yield AskDone(Finish.STOP, 1, self.sent, Timings(0, 0, 0, 0), False, 1)
        finally:
            self.closed.set()


async def serve(pipeline: Pipeline) -> tuple[http.web.AppRunner, str]:
    settings = settings_for(RAGMESH_QUERY_HTTP_PORT="0").query
    runner, port = await http.start(settings, pipeline, "127.0.0.1")  # type: ignore[arg-type]
    return runner, f"http://127.0.0.1:{port}/v1/chat/completions"


async def test_a_client_that_leaves_mid_stream_ends_its_ask() -> None:
    pipeline = Pipeline(deltas=10_000)
    runner, url = await serve(pipeline)
    try:
        async with httpx.AsyncClient() as client:
            async with client.stream("POST", url, json=BODY) as reply:
                assert reply.status_code == 200
                lines = reply.aiter_lines()
                while pipeline.sent < 5:
                    await anext(lines)
        await asyncio.wait_for(pipeline.closed.wait(), 5)
        sent = pipeline.sent
        await asyncio.sleep(0.2)
        assert pipeline.sent == sent < 100  # nothing more was generated for nobody
    finally:
        await runner.cleanup()


async def test_a_client_that_leaves_before_the_first_token_ends_its_ask_at_once() -> None:
    pipeline = Pipeline(deltas=1, first=30.0)
    runner, url = await serve(pipeline)
    try:
        async with httpx.AsyncClient() as client:
            async with client.stream("POST", url, json=BODY) as reply:
                await anext(reply.aiter_lines())  # the citations chunk, then nothing for 30 s
        await asyncio.wait_for(pipeline.closed.wait(), 2)  # not at the next write
    finally:
        await runner.cleanup()


async def test_an_error_after_the_first_chunk_is_a_last_event_in_openais_shape() -> None:
    runner, url = await serve(Pipeline(deltas=2, fail=DependencyUnavailable("generation down")))
    try:
        async with httpx.AsyncClient() as client:
            reply = await client.post(url, json=BODY)
        events = [e.removeprefix("data: ") for e in reply.text.split("\n\n") if e]
        assert reply.status_code == 200 and "[DONE]" not in events
        last = json.loads(events[-1])
        assert last["error"]["message"] == "generation down"
        assert last["error"]["type"] == "server_error" and last["error"]["code"] == "unavailable"
    finally:
        await runner.cleanup()
