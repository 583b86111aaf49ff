"""Server interceptors: metrics, call context, the error table, and the concurrency cap.

They wrap unary-unary and unary-stream ``grpc.aio`` handlers (the only kinds the API has).
Installed outermost first by :mod:`ragmesh.kit.server`::

    [tracing] → CallContextInterceptor → MetricsInterceptor → ErrorInterceptor
        → ConcurrencyLimit → [FaultInterceptor] → handler

The OpenTelemetry server interceptor (:mod:`ragmesh.kit.tracing`, when tracing is on) is
outermost, so the call's span is current in everything below, the access log included.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from opentelemetry import trace

from ragmesh.kit import callcontext, metrics
from ragmesh.kit.errors import (
    DataCorruption,
    DeadlineExceeded,
    DependencyUnavailable,
    FailedPrecondition,
    IndexBehind,
    InjectedFault,
    InvalidArgument,
    ModelMismatch,
    NotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    RagmeshError,
    ReadOnlyReplica,
    Unauthenticated,
    clip,
)

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024  # characters of a status message: trailers stay far below 16 KiB

# The one error table: domain error → gRPC status code. Handlers never set codes themselves.
ERROR_TABLE: dict[type[RagmeshError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DependencyUnavailable: grpc.StatusCode.UNAVAILABLE,
    ReadOnlyReplica: grpc.StatusCode.UNAVAILABLE,
    IndexBehind: grpc.StatusCode.UNAVAILABLE,
    InjectedFault: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    NotReady: grpc.StatusCode.FAILED_PRECONDITION,
    ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DataCorruption: grpc.StatusCode.DATA_LOSS,
}


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception to the status code and message the caller sees."""
    for cls in type(error).__mro__:
        code = ERROR_TABLE.get(cls)
        if code is not None:
            return code, clip(str(error), MAX_MESSAGE)
    return grpc.StatusCode.INTERNAL, "internal error"


Context = grpc.aio.ServicerContext[Any, Any]
Unary = Callable[[Any, Context], Awaitable[Any]]
Stream = Callable[[Any, Context], AsyncIterator[Any]]
Around = Callable[[str, Unary], Unary]
AroundStream = Callable[[str, Stream], Stream]


class Undecodable:
    """What a request body that is not the method's message decodes to (see
    :class:`ErrorInterceptor`): answered INVALID_ARGUMENT, never reaching the handler."""

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type

    def error(self) -> InvalidArgument:
        return InvalidArgument("request", f"cannot be decoded as {self.message_type}")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning :class:`Undecodable` instead of raising."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "the request message")

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or a RuntimeWarning turned error on bad UTF-8
            return Undecodable(name)

    return decode


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    method: str,
    unary: Around,
    stream: AroundStream,
    tolerant: bool = False,
) -> grpc.RpcMethodHandler[Any, Any] | None:
    if handler is None:
        return None
    deserializer = handler.request_deserializer
    if tolerant:
        deserializer = _tolerant(deserializer)
    if handler.unary_unary is not None and not handler.request_streaming:
        return grpc.unary_unary_rpc_method_handler(
            unary(method, cast(Unary, handler.unary_unary)),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None and not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(
            stream(method, cast(Stream, handler.unary_stream)),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


async def _iterate(behavior: Stream, request: Any, context: Context) -> AsyncIterator[Any]:
    """Run a server-streaming behavior written as an async generator or with context.write()."""
    result: Any = behavior(request, context)
    if inspect.isawaitable(result):  # write()-style handler, e.g. the library's Health.Watch
        await result
        return
    async for message in result:
        yield message


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps each method's handler once: grpc asks for the handler on every call, and the
    server's handlers (hence the wrapped ones of inner interceptors) never change."""

    only_api = False  # wrap only /ragmesh.* methods
    tolerant = False  # decode requests with :func:`_tolerant`

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method → (handler, wrapped handler)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if self.only_api and not method.startswith("/ragmesh."):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # type: ignore[no-any-return]
        wrapped = _wrap(handler, method, self.unary, self.stream, self.tolerant)
        self._wrapped[method] = (handler, wrapped)
        return wrapped  # type: ignore[return-value]

    @abc.abstractmethod
    def unary(self, method: str, behavior: Unary) -> Unary:
        """Wrap a unary-unary behavior."""

    @abc.abstractmethod
    def stream(self, method: str, behavior: Stream) -> Stream:
        """Wrap a unary-stream behavior."""


def _code_name(context: Context, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and not isinstance(code, bool):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return "UNKNOWN" if error is not None else "OK"


access_log = logging.getLogger("ragmesh.access")


def _log_call(method: str, code: str, start: float) -> None:
    duration_ms = round((time.perf_counter() - start) * 1000, 3)
    extra = {"method": method, "grpc_code": code, "duration_ms": duration_ms}
    access_log.info("%s %s %.1f ms", method, code, duration_ms, extra=extra)


class MetricsInterceptor(_Interceptor):
    """Exports grpc_server_started_total, grpc_server_handled_total and handling seconds, and
    writes one access-log line per API call (health and reflection are counted, not logged).
    Runs inside :class:`CallContextInterceptor`, so the line carries the call's ids."""

    def unary(self, method: str, behavior: Unary) -> Unary:
        series = metrics.MethodMetrics(method, "unary")
        logged = method.startswith("/ragmesh.")

        async def wrapped(request: Any, context: Context) -> Any:
            series.started.inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                code = _code_name(context, error)
                series.handled(code, start)
                if logged:
                    _log_call(method, code, start)

        return wrapped

    def stream(self, method: str, behavior: Stream) -> Stream:
        series = metrics.MethodMetrics(method, "server_stream")
        logged = method.startswith("/ragmesh.")

        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            series.started.inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                async for message in _iterate(behavior, request, context):
                    series.sent.inc()
                    yield message
            except BaseException as e:
                error = e
                raise
            finally:
                code = _code_name(context, error)
                series.handled(code, start)
                if logged:
                    _log_call(method, code, start)

        return wrapped


def _bind(context: Context) -> Any:
    ctx = callcontext.from_metadata(context.invocation_metadata() or (), context.time_remaining())
    # the request id on the call's span (OpenTelemetry's name for captured gRPC metadata)
    trace.get_current_span().set_attribute(
        "rpc.grpc.request.metadata.x-request-id", [ctx.request_id]
    )
    return callcontext.bind(ctx)


class CallContextInterceptor(_Interceptor):
    """Binds the request id, tracing headers and deadline of the call for outbound calls."""

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            token = _bind(context)
            try:
                return await behavior(request, context)
            finally:
                callcontext.unbind(token)

        return wrapped

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            token = _bind(context)
            try:
                async for message in _iterate(behavior, request, context):
                    yield message
            finally:
                callcontext.unbind(token)

        return wrapped


class FaultInterceptor(_Interceptor):
    """Injected faults (RAGMESH_FAULT_*): failed calls, and added latency on unary calls.

    The faulty canaries of the canary-analysis tests are built with it; the delay before the
    first token of a stream is the generation service's, so its own histogram sees it.
    """

    only_api = True

    def __init__(self, error_percent: float, delay: float) -> None:
        super().__init__()
        self.error_ratio = error_percent / 100.0
        self.delay = delay
        self._random = random.Random()

    def _maybe_fail(self, method: str) -> None:
        if self.error_ratio and self._random.random() < self.error_ratio:
            raise InjectedFault(f"injected fault in {method}")

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            if self.delay:
                await asyncio.sleep(self.delay)
            self._maybe_fail(method)
            return await behavior(request, context)

        return wrapped

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            self._maybe_fail(method)
            async for message in _iterate(behavior, request, context):
                yield message

        return wrapped


async def _abort(context: Context, method: str, error: Exception) -> None:
    code, message = status_for(error)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", method, exc_info=error)
    await context.abort(code, message)


class ErrorInterceptor(_Interceptor):
    """Applies :data:`ERROR_TABLE` to every exception a handler raises, and answers a
    request body that cannot be decoded with INVALID_ARGUMENT (gRPC's own answer is UNKNOWN)."""

    only_api = True
    tolerant = True

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            try:
                if isinstance(request, Undecodable):
                    raise request.error()
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort(context, method, e)

        return wrapped

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                if isinstance(request, Undecodable):
                    raise request.error()
                async for message in _iterate(behavior, request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort(context, method, e)

        return wrapped


class ConcurrencyLimit(_Interceptor):
    """Rejects API calls past ``limit`` in flight with Overloaded (health and reflection exempt)."""

    only_api = True

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.in_flight = 0

    def _enter(self) -> None:
        if self.in_flight >= self.limit:
            raise Overloaded(f"server at capacity: {self.in_flight} calls in flight")
        self.in_flight += 1

    def unary(self, method: str, behavior: Unary) -> Unary:
        async def wrapped(request: Any, context: Context) -> Any:
            self._enter()
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return wrapped

    def stream(self, method: str, behavior: Stream) -> Stream:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            self._enter()
            try:
                async for message in _iterate(behavior, request, context):
                    yield message
            finally:
                self.in_flight -= 1

        return wrapped
