"""The gate's HTTP face: Flagger's webhook protocol over the recall measurement (service.py).

``POST /recall`` takes a Flagger webhook payload (``{"name", "namespace", "phase",
"metadata": {...}}``; only ``metadata`` is read) and answers 200 with the verdict when recall
meets the threshold, 412 when it does not, 400 for a bad probe and 503 when a service it must
call is down. Flagger treats any non-2xx answer as a failed check. ``GET /healthz`` is the
probe. Channels are opened once per address and reused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from ragmesh.gate.service import (
    GoldenQuery,
    Probe,
    Retrieve,
    Retrieved,
    Verdict,
    measure,
    parse_probe,
)
from ragmesh.kit.channels import open_channel
from ragmesh.kit.clients import EmbeddingClient, QueryClient, RetrievalClient
from ragmesh.kit.domain import AskInput, Citations, Delta, Purpose
from ragmesh.kit.errors import DependencyUnavailable, InvalidArgument, RagmeshError

log = logging.getLogger(__name__)
MAX_BODY = 64 << 10


class Retrievers:
    """Retrieve functions over real services, with one channel per address. A direct search
    runs in ``tenant`` (RAGMESH_DEFAULT_TENANT, where the golden documents are); an Ask
    carries no tenant, so query answers it in its own default tenant."""

    def __init__(self, call_timeout: float, tenant: str) -> None:
        self.call_timeout = call_timeout
        self.tenant = tenant
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = open_channel(address, default_timeout=self.call_timeout)
        return self._channels[address]

    def for_probe(self, probe: Probe) -> Retrieve:
        if probe.query:
            routing = {"x-ragmesh-canary": "true"} if probe.canary else {}
            client = QueryClient(
                self.channel(probe.query), timeout=self.call_timeout * 6, routing=routing
            )
            answers = probe.min_fact is not None

            async def ask(question: str, k: int) -> Retrieved:
                request = AskInput(question=question, top_k=k, skip_cache=True)
                documents: list[str] = []
                answer = ""
                try:
                    async for event in client.ask(request):
                        if isinstance(event, Citations):
                            documents += [c.document_id for c in event.citations]
                            if not answers:
                                break  # citations come first; the answer is not needed
                        elif isinstance(event, Delta):
                            answer += event.text
                except RagmeshError as e:
                    raise DependencyUnavailable(f"query at {probe.query}: {e}") from None
                return Retrieved(documents, answer)

            return ask
        embedder = EmbeddingClient(self.channel(probe.embedding))
        retriever = RetrievalClient(self.channel(probe.retrieval))

        async def search(question: str, k: int) -> Retrieved:
            # dense only: this probe judges the vectors (an embedding or index canary); the
            # lexical half of hybrid search would find the golden documents by their words
            # even with a broken embedding model. A query probe judges the whole (hybrid).
            embedded = await embedder.embed([question], Purpose.QUERY)
            result = await retriever.search(self.tenant, embedded.vectors[0], k, {}, 0)
            return Retrieved([hit.document_id for hit in result.hits])

        return search

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)


STATUS_FOR: dict[type[RagmeshError], HTTPStatus] = {
    InvalidArgument: HTTPStatus.BAD_REQUEST,
    DependencyUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
}


class GateServer:
    """A threaded HTTP server whose requests run the engine on the service's event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        golden: Sequence[GoldenQuery],
        retrievers: Retrievers,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.golden, self.retrievers, self.loop = golden, retrievers, loop
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(HTTPStatus.OK, {"status": "ok"})
                else:
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:
                if self.path != "/recall":
                    self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
                    return
                status, body = gate.handle(self._body())
                self._reply(status, body)

            def _body(self) -> bytes:
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(min(length, MAX_BODY + 1))

            def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]

    async def _measure(self, probe: Probe) -> Verdict:
        # on the event loop: aio channels belong to it
        return await measure(self.golden, self.retrievers.for_probe(probe), probe)

    def handle(self, raw: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        """One webhook call: parse, measure on the event loop, map the outcome to HTTP."""
        try:
            if len(raw) > MAX_BODY:
                raise InvalidArgument("body", f"exceeds {MAX_BODY} bytes")
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                raise InvalidArgument("body", "is not JSON") from None
            metadata = payload.get("metadata") if isinstance(payload, dict) else None
            if not isinstance(metadata, dict):
                raise InvalidArgument("metadata", "must be an object")
            probe = parse_probe(metadata)
            verdict = asyncio.run_coroutine_threadsafe(self._measure(probe), self.loop).result()
        except RagmeshError as e:
            status = next(
                (s for cls, s in STATUS_FOR.items() if isinstance(e, cls)),
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
            return status, {"passed": False, "error": str(e)}
        log.info(
            "recall@%d %.3f (min %.3f) for %s", verdict.k, verdict.recall, verdict.min_recall, probe
        )
        return (
            HTTPStatus.OK if verdict.passed else HTTPStatus.PRECONDITION_FAILED
        ), verdict.as_dict()
