"""The ``openai`` engine: streamed chat completions from any OpenAI-compatible server.

vLLM's server or router, NIM, TGI, the llama.cpp server and OpenAI itself speak the same
``POST /v1/chat/completions`` with ``stream: true`` (server-sent events, ``data: {...}``
lines ending with ``data: [DONE]``). The prompt is chat-shaped
(:func:`ragmesh.generation.prompt.chat_messages`). Usage comes from the server's final chunk
(``stream_options.include_usage``); a server that omits it is counted one token per chunk.

- A completion that fails before its first token (connection error, timeout, 429, 5xx) is
  tried again, up to RAGMESH_GEN_OPENAI_ATTEMPTS; once a token streamed it never is.
- :meth:`OpenAIEngine.abort` closes the stream's connection: the server sees the client
  go and stops generating.
- The server's answers map to the one error table: 429 → Overloaded (RESOURCE_EXHAUSTED),
  5xx and connection errors → DependencyUnavailable (UNAVAILABLE), a prompt over the
  model's context → InvalidArgument, 401/403 or an unknown model → NotReady
  (FAILED_PRECONDITION, naming the setting to fix).
- :meth:`OpenAIEngine.health` asks ``GET /models`` for the model: the generation service
  is NOT_SERVING while the server is down or does not serve it.

The server's tokenizer is remote, so the passage budget counts
RAGMESH_GEN_OPENAI_CHARS_PER_TOKEN characters per token (an overestimate by default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ragmesh.generation.engine import EngineRequest, Piece
from ragmesh.generation.prompt import chat_messages
from ragmesh.kit.config import GenerationSettings
from ragmesh.kit.errors import (
    ConfigError,
    DependencyUnavailable,
    InvalidArgument,
    NotReady,
    Overloaded,
    RagmeshError,
    clip,
)

log = logging.getLogger(__name__)
RETRY_BACKOFF = 0.2  # seconds before the second attempt, doubled after each


class OpenAIEngine:
    """One HTTP client to one OpenAI-compatible server, shared by every stream."""

    def __init__(self, settings: GenerationSettings) -> None:
        if not settings.openai_url:
            raise ConfigError("RAGMESH_GEN_OPENAI_URL: required by the openai engine")
        if not settings.model:
            raise ConfigError("RAGMESH_GEN_MODEL: the model name the openai server serves")
        self.url = settings.openai_url.rstrip("/")
        self.model = settings.model
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._probe: httpx.AsyncClient | None = None  # health: a pool of its own
        self._streams: dict[str, httpx.Response] = {}
        self._last_chunk = float("-inf")

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def context_tokens(self) -> int:
        return self.settings.context_tokens

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.settings.openai_chars_per_token)

    def truncate(self, text: str, max_tokens: int) -> str:
        return text[: max(0, int(max_tokens * self.settings.openai_chars_per_token))]

    async def load(self) -> None:
        """Open the client (the key file read once); the server may come up later, which
        :meth:`health` follows."""
        headers = {}
        key_file = self.settings.openai_api_key_file
        if key_file is not None:
            try:
                headers["authorization"] = f"Bearer {key_file.read_text().strip()}"
            except OSError as e:
                raise ConfigError(f"RAGMESH_GEN_OPENAI_API_KEY_FILE: {e}") from None
        timeout = self.settings.openai_timeout
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=self.settings.max_streams + 2),
        )
        # a health check cut short by its deadline never disturbs a stream's connection
        self._probe = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=5.0)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise NotReady("the openai engine is not loaded")
        return self._client

    def _body(self, request: EngineRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(request.question, request.sources),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    async def _open(self, request: EngineRequest) -> httpx.Response:
        """The streaming response, after retrying what failed before any token."""
        delay = RETRY_BACKOFF
        for attempt in range(1, self.settings.openai_attempts + 1):
            try:
                response = await self.client.send(
                    self.client.build_request(
                        "POST", "/chat/completions", json=self._body(request)
                    ),
                    stream=True,
                )
            except httpx.HTTPError as e:
                error: RagmeshError = DependencyUnavailable(f"model server at {self.url}: {e!r}")
            else:
                if response.status_code == 200:
                    return response
                text = (await response.aread()).decode(errors="replace")
                await response.aclose()
                error = self._error(response.status_code, text)
            if not isinstance(error, Overloaded | DependencyUnavailable):
                raise error
            if attempt == self.settings.openai_attempts:
                raise error
            log.warning("completion attempt %d failed (%s); retrying", attempt, error)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _error(self, status: int, text: str) -> RagmeshError:
        """A server's non-200 answer as a domain error."""
        detail = clip(_message(text), 300)
        if status == 429:
            return Overloaded(f"the model server is at capacity: {detail}")
        if status in (401, 403):
            return NotReady(
                f"the model server at {self.url} refused the credentials ({status}): check "
                "RAGMESH_GEN_OPENAI_API_KEY_FILE"
            )
        if status == 404:
            return NotReady(
                f"the model server at {self.url} does not serve {self.model!r} ({detail}): "
                "check RAGMESH_GEN_MODEL and RAGMESH_GEN_OPENAI_URL"
            )
        if status in (400, 413, 422) and "context" in detail.lower():
            return InvalidArgument("question", f"the prompt exceeds the model's context: {detail}")
        if status in (400, 413, 422):
            return InvalidArgument("params", f"the model server refused the request: {detail}")
        return DependencyUnavailable(f"model server at {self.url} answered {status}: {detail}")

    async def generate(self, request: EngineRequest) -> AsyncGenerator[Piece, None]:
        response = await self._open(request)
        self._streams[request.request_id] = response
        self._last_chunk = time.monotonic()
        counted = 0
        usage: int | None = None
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    raise DependencyUnavailable(f"model server: {clip(str(chunk['error']), 300)}")
                if chunk.get("usage"):
                    usage = int(chunk["usage"].get("completion_tokens") or 0)
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        counted += 1
                        self._last_chunk = time.monotonic()
                        yield Piece(text, 1)
        except httpx.HTTPError as e:
            if request.request_id in self._streams:  # not closed by abort: the server failed
                raise DependencyUnavailable(f"model server stream broke: {e!r}") from None
        finally:
            self._streams.pop(request.request_id, None)
            await response.aclose()
        if usage is not None and usage > counted:  # chunks that held several tokens
            yield Piece("", usage - counted)

    async def abort(self, request_id: str) -> None:
        response = self._streams.pop(request_id, None)
        if response is not None:
            await response.aclose()  # the connection closes: the server stops generating

    async def health(self) -> bool:
        """The server is healthy while it streams to us (a server that generates one request
        at a time, like llama.cpp's, answers nothing else meanwhile), else when it lists
        the model."""
        if self._streams and time.monotonic() - self._last_chunk < self.settings.openai_timeout:
            return True
        if self._probe is None:
            return False
        try:
            response = await self._probe.get("/models")
        except httpx.HTTPError as e:
            log.warning("model server at %s unreachable: %r", self.url, e)
            return False
        if response.status_code != 200:
            log.warning(
                "model server at %s: GET /models answered %d", self.url, response.status_code
            )
            return False
        served = {m.get("id") for m in response.json().get("data", [])}
        if self.model not in served:
            log.warning(
                "model server at %s does not serve %r (it serves %s)",
                self.url,
                self.model,
                sorted(map(str, served)),
            )
            return False
        return True

    async def close(self) -> None:
        for client in (self._client, self._probe):
            if client is not None:
                await client.aclose()
        self._client = self._probe = None


def _message(text: str) -> str:
    """The message of an OpenAI-style error body ``{"error": {"message": ...}}``, or the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return text.strip()
