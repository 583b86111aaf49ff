"""The openai engine against a scripted OpenAI-compatible HTTP server: the request it sends,
streamed pieces and usage, retries only before the first token, and each server answer
mapped through the error table. (The real server, llama.cpp with SmolLM2: tests/e2e/test_llm.py.)"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ragmesh.generation.engine import EngineRequest, Piece, Source
from ragmesh.generation.openai_engine import OpenAIEngine
from ragmesh.kit.errors import (
    ConfigError,
    DependencyUnavailable,
    InvalidArgument,
    NotReady,
    Overloaded,
)
from tests.conftest import settings_for


@dataclass
class Reply:
    status: int = 200
    chunks: list[dict[str, Any]] = field(default_factory=list)
    body: str = ""


@dataclass
class FakeServer:
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["smollm2"])
    port: int = 0


def sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            data = {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]}
            self._send(200, json.dumps(data).encode(), "application/json")

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            fake.requests.append((self.path, dict(self.headers.items()), body))
            reply = fake.replies.popleft() if fake.replies else Reply(chunks=[delta("ok")])
            if reply.status != 200:
                self._send(reply.status, reply.body.encode(), "application/json")
            else:
                self._send(200, sse(reply.chunks), "text/event-stream")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
async def engine(server: FakeServer, tmp_path: Path) -> AsyncIterator[OpenAIEngine]:
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    settings = settings_for(
        RAGMESH_GEN_ENGINE="openai",
        RAGMESH_GEN_MODEL="smollm2",
        RAGMESH_GEN_OPENAI_URL=f"http://127.0.0.1:{server.port}/v1",
        RAGMESH_GEN_OPENAI_API_KEY_FILE=str(key),
        RAGMESH_GEN_OPENAI_TIMEOUT_SECONDS="5",
    )
    eng = OpenAIEngine(settings.generation)
    await eng.load()
    yield eng
    await eng.close()


REQUEST = EngineRequest(
    request_id="r1",
    prompt="(rendered)",
    question="How often does the light flash?",
    sources=(Source(1, "Two white flashes every fifteen seconds."),),
    max_tokens=32,
    temperature=0.0,
    top_p=1.0,
    seed=7,
)


async def pieces(engine: OpenAIEngine) -> list[Piece]:
    return [p async for p in engine.generate(REQUEST)]


async def test_a_chat_completion_is_streamed_with_the_servers_usage(
    engine: OpenAIEngine, server: FakeServer
) -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 5}}
    server.replies.append(Reply(chunks=[delta("Two "), delta("flashes"), delta(" [1]."), usage]))
    got = await pieces(engine)
    assert "".join(p.text for p in got) == "Two flashes [1]."
    assert sum(p.tokens for p in got) == 5  # three chunks, five tokens by the server's count
    path, headers, body = server.requests[-1]
    assert path == "/v1/chat/completions" and headers["authorization"] == "Bearer sk-test"
    assert body["model"] == "smollm2" and body["stream"] is True and body["seed"] == 7
    assert body["max_tokens"] == 32 and body["stream_options"] == {"include_usage": True}
    system, user = body["messages"]
    assert system["role"] == "system" and '<passage id="1">' in system["content"]
    assert user == {"role": "user", "content": REQUEST.question}


async def test_failures_before_the_first_token_are_retried(
    engine: OpenAIEngine, server: FakeServer
) -> None:
    server.replies.extend(
        [Reply(503, body="{}"), Reply(429, body="{}"), Reply(chunks=[delta("x")])]
    )
    assert [p.text for p in await pieces(engine)] == ["x"]
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "status, body, error, words",
    [
        (429, '{"error": {"message": "queue full"}}', Overloaded, "capacity"),
        (503, "{}", DependencyUnavailable, "503"),
        (401, '{"error": {"message": "bad key"}}', NotReady, "RAGMESH_GEN_OPENAI_API_KEY_FILE"),
        (404, '{"error": {"message": "no such model"}}', NotReady, "RAGMESH_GEN_MODEL"),
        (400, '{"error": {"message": "maximum context length is 2048"}}', InvalidArgument,
         "context"),
    ],
)  # fmt: skip
async def test_server_answers_map_to_the_error_table(
    engine: OpenAIEngine,
    server: FakeServer,
    status: int,
    body: str,
    error: type[Exception],
    words: str,
) -> None:
    server.replies.extend([Reply(status, body=body)] * 3)
    with pytest.raises(error, match=words):
        await pieces(engine)


async def test_an_unreachable_server_is_unavailable_and_unhealthy(tmp_path: Path) -> None:
    settings = settings_for(
        RAGMESH_GEN_ENGINE="openai",
        RAGMESH_GEN_MODEL="smollm2",
        RAGMESH_GEN_OPENAI_URL="http://127.0.0.1:9/v1",  # discard: nothing listens
        RAGMESH_GEN_OPENAI_ATTEMPTS="2",
    )
    eng = OpenAIEngine(settings.generation)
    await eng.load()
    try:
        assert await eng.health() is False
        with pytest.raises(DependencyUnavailable):
            await pieces(eng)
    finally:
        await eng.close()


async def test_health_needs_the_model_served(engine: OpenAIEngine, server: FakeServer) -> None:
    assert await engine.health() is True
    server.models = ["another-model"]
    assert await engine.health() is False


def test_the_engine_needs_its_url_and_model() -> None:
    with pytest.raises(ConfigError, match="RAGMESH_GEN_OPENAI_URL"):
        OpenAIEngine(settings_for(RAGMESH_GEN_ENGINE="openai", RAGMESH_GEN_MODEL="m").generation)
