"""The openai engine against a real OpenAI-compatible server with a real trained model:
SmolLM2-135M-Instruct behind llama.cpp's server (``make llm``), started by the project's own
lab code. Streaming, stop sequences, max_tokens and usage, a cancelled stream stopping the
server's generation (seen in the server's own log), and the server killed: UNAVAILABLE and
NOT_SERVING, then SERVING again when it is back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragmesh.generation.__main__ import build
from ragmesh.generation.factory import create_engine
from ragmesh.generation.service import GenerationService
from ragmesh.kit.server import ServiceHost
from ragmesh.v1 import common_pb2, generation_service_pb2, generation_service_pb2_grpc
from ragmesh_lab.cli import llm
from ragmesh_lab.cli.supervisor import Proc, Stack, free_port
from tests.conftest import settings_for, start
from tests.support.generation import generate

pytestmark = pytest.mark.slow
PASSAGES = [
    common_pb2.Passage(
        chunk_id="lighthouse.md#0",
        document_id="lighthouse.md",
        text="The Keelhaven lighthouse was first lit in 1871. The lantern shows two white "
        "flashes every fifteen seconds. In clear weather the light is visible from 22 "
        "nautical miles away.",
    ),
]
QUESTION = "How often does the Keelhaven lighthouse flash?"


@dataclass
class ModelServer:
    stack: Stack
    port: int
    proc: Proc

    def restart(self) -> None:
        self.proc = llm.start_model_server(self.stack, self.port)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (user + system), from /proc."""
        fields = Path(f"/proc/{self.proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    stack = Stack(tmp_path_factory.mktemp("llm"))
    stack.workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    try:
        yield ModelServer(stack, port, llm.start_model_server(stack, port))
    finally:
        stack.down()


@pytest.fixture(scope="module")
async def generation(server: ModelServer) -> AsyncIterator[ServiceHost]:
    settings = settings_for(
        **llm.generation_env(server.port), RAGMESH_HEALTH_INTERVAL_SECONDS="0.5"
    )
    engine = create_engine(settings.generation, settings.embedding)
    host = await start(settings, build(GenerationService(settings.generation, engine)))
    yield host
    await host.drain_and_stop()


async def ask(port: int, **params: object) -> tuple[list[str], generation_service_pb2.GenerateDone]:
    return await generate(port, QUESTION, PASSAGES, timeout=60, **params)


async def test_the_model_answers_from_the_passage_as_a_stream(generation: ServiceHost) -> None:
    deltas, done = await ask(generation.port, max_tokens=48, temperature=0.0, seed=1)
    answer = "".join(deltas)
    assert len(deltas) > 3, done  # streamed token by token, not in one piece
    # grounded in the passage (a 135M model words it its own way)
    assert any(fact in answer.lower() for fact in ("fifteen", "15", "22", "1871")), answer
    assert done.model == llm.MODEL_ALIAS
    assert 0 < done.usage.completion_tokens <= 48 and done.usage.prompt_tokens > 0


async def test_max_tokens_and_stop_sequences(generation: ServiceHost) -> None:
    deltas, done = await ask(generation.port, max_tokens=5, temperature=0.0)
    assert done.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert done.usage.completion_tokens == 5
    deltas, done = await ask(generation.port, max_tokens=48, temperature=0.0, stop=["flash"])
    assert done.finish_reason == common_pb2.FINISH_REASON_STOP
    assert "flash" not in "".join(deltas).lower()


async def test_a_cancelled_stream_stops_the_servers_generation(
    generation: ServiceHost, server: ModelServer
) -> None:
    """400 tokens take the server over ten seconds of CPU here; once the caller cancels
    after three, the server stops: its CPU time stands still (while generating, it grows
    by most of a second every second: the control below)."""
    before = server.cpu_seconds()
    started = asyncio.get_running_loop().time()
    _, done = await ask(generation.port, max_tokens=40, temperature=0.0)
    spent, took = server.cpu_seconds() - before, asyncio.get_running_loop().time() - started
    assert spent > 0.5 * took, (spent, took)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{generation.port}") as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        request = generation_service_pb2.GenerateRequest(
            question="Write a very long story about a lighthouse keeper, at least 2000 "
            "words, with many chapters.",  # it writes all 400 tokens when not cancelled
            passages=PASSAGES,
            params=common_pb2.GenerationParams(max_tokens=400, temperature=0.0),
        )
        call = stub.Generate(request, timeout=60)
        received = 0
        async for _ in call:
            received += 1
            if received == 3:
                call.cancel()
                break
    await asyncio.sleep(1.0)  # the server notices the closed connection at its next token
    before = server.cpu_seconds()
    await asyncio.sleep(2.0)
    assert server.cpu_seconds() - before < 0.3  # idle, where generating would take ~2 s
    # and it serves the next completion
    _, done = await ask(generation.port, max_tokens=4, temperature=0.0)
    assert done.usage.completion_tokens == 4


async def health(port: int) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def test_the_server_killed_is_unavailable_then_recovers(
    generation: ServiceHost, server: ModelServer
) -> None:
    server.proc.popen.kill()
    server.proc.popen.wait(10)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ask(generation.port, max_tokens=8)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    for _ in range(40):
        if await health(generation.port) == "NOT_SERVING":
            break
        await asyncio.sleep(0.1)
    assert await health(generation.port) == "NOT_SERVING"
    await asyncio.to_thread(server.restart)
    for _ in range(40):
        if await health(generation.port) == "SERVING":
            break
        await asyncio.sleep(0.1)
    assert await health(generation.port) == "SERVING"
    _, done = await ask(generation.port, max_tokens=8, temperature=0.0)
    assert done.usage.completion_tokens > 0


def test_the_model_file_is_the_packaged_gguf() -> None:
    path = llm.model_file()
    assert isinstance(path, Path) and path.stat().st_size > 50_000_000
