"""The query service's HTTP face: the OpenAI-compatible API (:mod:`ragmesh.query.openai_api`)
on ``RAGMESH_QUERY_HTTP_PORT``, beside gRPC, with the same pipeline behind it.

- ``GET /v1/models``, ``GET /v1/models/{model}``: the configured profiles;
- ``POST /v1/chat/completions``: one Ask; ``"stream": true`` answers with server-sent
  events (``data: {chunk}`` lines, then ``data: [DONE]``), as OpenAI's API does.

A call carries what a gRPC call does: the request id, the trace and routing headers, and the
caller and tenant the ingress gateway verified (bound as the call context). A domain error is
answered with the HTTP status of its gRPC code in OpenAI's error shape; once a stream has
begun, as a last ``data: {"error": ...}`` event. A client that disconnects cancels its Ask.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from prometheus_client import Counter

from ragmesh.kit import callcontext
from ragmesh.kit.config import QuerySettings
from ragmesh.kit.errors import ConfigError, InvalidArgument
from ragmesh.kit.interceptors import status_for
from ragmesh.query import openai_api
from ragmesh.query.service import AskPipeline

log = logging.getLogger("ragmesh.access")
REQUESTS = Counter(
    "ragmesh_openai_requests",
    "OpenAI-compatible API requests, by route and HTTP status.",
    ["route", "code"],
)
MAX_BODY = 1 << 20  # bytes of a request body (a question is RAGMESH_QUESTION_MAX_CHARS)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(error: BaseException) -> web.Response:
    param = None
    if isinstance(error, InvalidArgument):  # named as the OpenAI request names the field
        param = openai_api.param_of(error.field)
        error = InvalidArgument(param, error.problem)
    code, message = status_for(error)
    status = openai_api.HTTP_STATUS.get(code, 500)
    kind = "model_not_found" if status == 404 else code.name.lower()
    return web.json_response(openai_api.error_body(status, message, param, kind), status=status)


@web.middleware
async def _call(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds the call context; answers errors in OpenAI's shape; counts and logs the call."""
    ctx = callcontext.from_metadata(request.headers.items(), None)
    token = callcontext.bind(ctx)
    started = time.perf_counter()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as e:  # aiohttp's own: no route, wrong method, body too large
        response = web.json_response(openai_api.error_body(e.status, e.reason), status=e.status)
    except Exception as e:  # noqa: BLE001 - every error becomes an answer
        if status_for(e)[0] == grpc.StatusCode.INTERNAL:  # no domain error: a bug
            log.exception("%s %s failed", request.method, request.path)
        response = _error(e)
    finally:
        callcontext.unbind(token)
    if not response.prepared:
        response.headers["x-request-id"] = ctx.request_id
    REQUESTS.labels(name, str(response.status)).inc()
    log.info(
        "%s %s %d %.1f ms",
        request.method,
        name,
        response.status,
        (time.perf_counter() - started) * 1000,
        extra={"request_id": ctx.request_id, "caller": ctx.caller, "tenant": ctx.tenant},
    )
    return response


class OpenAIFace:
    """The handlers, over one pipeline and the configured profiles."""

    def __init__(self, settings: QuerySettings, pipeline: AskPipeline) -> None:
        self.names = openai_api.profiles(settings.openai_models)
        for name, top_k in self.names.items():
            if top_k > settings.max_top_k:
                raise ConfigError(
                    f"RAGMESH_OPENAI_MODELS: {name}={top_k} exceeds RAGMESH_MAX_TOP_K "
                    f"({settings.max_top_k})"
                )
        self.pipeline = pipeline
        self.created = int(time.time())

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response(openai_api.models(self.names, self.created))

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.names:
            raise web.HTTPNotFound(reason=f"the model {name!r} does not exist")
        return web.json_response(openai_api.model(name, self.created))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json(loads=json.loads)
        except ValueError as e:
            raise InvalidArgument("body", "is not valid JSON") from e
        chat = openai_api.chat_request(body, self.names)
        completion = openai_api.Completion(chat.model)
        events = self.pipeline.ask(chat.ask)
        try:
            # the first event before any byte: a refused Ask is a plain error response
            first = await anext(events)
            if not chat.stream:
                completion.chunks(first)
                async for event in events:
                    completion.chunks(event)
                return web.json_response(completion.response())
            response = web.StreamResponse(
                headers={
                    "content-type": "text/event-stream",
                    "cache-control": "no-cache",
                    "x-request-id": _request_id(),
                }
            )
            await response.prepare(request)
            try:
                for chunk in completion.chunks(first):
                    await _send(response, chunk)
                async for event in events:
                    for chunk in completion.chunks(event):
                        await _send(response, chunk)
                if chat.include_usage:
                    await _send(response, completion.usage_chunk())
                await response.write(b"data: [DONE]\n\n")
            except ConnectionResetError:
                return response  # the client left: nothing to tell it (the Ask is closed)
            except Exception as e:  # noqa: BLE001 - after the headers, an error is an event
                error = _error(e)
                assert error.text is not None
                await response.write(b"data: " + error.text.encode() + b"\n\n")
            await response.write_eof()
            return response
        finally:
            await events.aclose()


def _request_id() -> str:
    ctx = callcontext.current()
    return ctx.request_id if ctx is not None else ""


async def _send(response: web.StreamResponse, chunk: openai_api.Json) -> None:
    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")


def application(settings: QuerySettings, pipeline: AskPipeline) -> web.Application:
    face = OpenAIFace(settings, pipeline)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_call])
    app.router.add_get("/v1/models", face.list_models)
    app.router.add_get("/v1/models/{model}", face.get_model)
    app.router.add_post("/v1/chat/completions", face.chat)
    return app


async def start(
    settings: QuerySettings, pipeline: AskPipeline, host: str
) -> tuple[web.AppRunner, int]:
    """Serve the API on ``settings.http_port`` (0: a free one); the runner and the bound port.
    ``runner.cleanup()`` stops it."""
    runner = web.AppRunner(
        application(settings, pipeline), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, settings.http_port)
    await site.start()
    port = int(runner.addresses[0][1])
    logging.getLogger(__name__).info("query openai listening: http %s:%d", host, port)
    return runner, port
