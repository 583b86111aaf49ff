"""Client channels: one per peer, created once at start, never per request.

Every outbound call gets a deadline (the call's own timeout or the channel default, capped
by what is left of the inbound caller's deadline) and carries the request id and tracing
headers of the inbound call (with tracing on, a client span's context in their place).
Retries are configured through the gRPC service config for the
methods the protos mark idempotent (``idempotency_level``) only: ``Generate``, ``Ask`` and
``Ingest`` are never retried.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from ragmesh.kit import callcontext, tracing
from ragmesh.v1 import (
    embedding_service_pb2,
    generation_service_pb2,
    query_service_pb2,
    retrieval_service_pb2,
)

API_FILES: tuple[FileDescriptor, ...] = (
    embedding_service_pb2.DESCRIPTOR,
    retrieval_service_pb2.DESCRIPTOR,
    generation_service_pb2.DESCRIPTOR,
    query_service_pb2.DESCRIPTOR,
)

_SAFE_LEVELS = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)


def idempotent_methods(files: Iterable[FileDescriptor] = API_FILES) -> list[tuple[str, str]]:
    """(service full name, method name) of every method the protos mark safe to retry."""
    found = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                if method.GetOptions().idempotency_level in _SAFE_LEVELS:
                    found.append((service.full_name, method.name))
    return found


def retry_service_config() -> str:
    """A gRPC service config retrying UNAVAILABLE on idempotent methods only."""
    names = [{"service": s, "method": m} for s, m in idempotent_methods()]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def effective_timeout(requested: float | None, default: float) -> float:
    """The deadline of an outbound call: requested or default, capped by the caller's."""
    timeout = default if requested is None else requested
    ctx = callcontext.current()
    remaining = ctx.remaining() if ctx is not None else None
    if remaining is not None:
        timeout = min(timeout, remaining)
    return timeout


def _outbound_metadata(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    base: list[tuple[str, str | bytes]] = list(metadata or ())
    ctx = callcontext.current()
    if ctx is not None:
        # With tracing on, the client span's context replaces the inbound one (injected by
        # the OpenTelemetry interceptor); off, the inbound headers go on as they came.
        skip = {k for k, _ in base} | (tracing.TRACE_HEADERS if tracing.enabled() else set())
        base.extend((k, v) for k, v in ctx.headers if k not in skip)
    return tuple(base)


class _Outbound:
    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=effective_timeout(details.timeout, self.default_timeout),
            metadata=grpc.aio.Metadata(*_outbound_metadata(details.metadata)),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# Two classes: a grpc.aio channel files an interceptor under the first kind it matches only,
# so one class implementing both would never see a server-streaming call (Generate).
class _OutboundUnary(_Outbound, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _OutboundStream(_Outbound, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def open_channel(
    target: str, *, default_timeout: float = 10.0, max_message_bytes: int = 32 << 20
) -> grpc.aio.Channel:
    """An aio channel to ``target`` with deadlines, metadata propagation and safe retries."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config()),
    ]
    outbound = [_OutboundUnary(default_timeout), _OutboundStream(default_timeout)]
    return grpc.aio.insecure_channel(
        target,
        options=options,
        interceptors=[*outbound, *tracing.client_interceptors()],  # type: ignore[list-item]
    )
