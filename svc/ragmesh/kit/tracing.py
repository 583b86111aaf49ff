"""OpenTelemetry tracing: the SDK, the gRPC aio instrumentation and the propagators.

Tracing is on when ``RAGMESH_OTLP_ENDPOINT`` names an OTLP/gRPC collector. Then every API
call gets a server span (continuing the trace the sidecar started, read from W3C
``traceparent`` or B3 headers), every outbound call a client span whose context is injected
in both formats, and the services add their own spans (:data:`tracer`). Sampling follows the
parent's decision (the mesh's sampling percentage) and samples ``RAGMESH_TRACE_SAMPLE_RATIO``
of the traces a service starts itself. When tracing is off no interceptor is installed and
the inbound tracing headers are forwarded untouched, so the sidecars' spans still join up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ragmesh.kit import callcontext
from ragmesh.kit.config import ServerSettings

#: spans of the services' own work (batching, search, cache, prompt, generation)
tracer = trace.get_tracer("ragmesh")

#: the headers the propagators write: not copied from the inbound call when tracing is on
TRACE_HEADERS = frozenset(
    {"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
     "x-b3-sampled", "x-b3-flags", "baggage"}
)  # fmt: skip

_provider: Any = None


def enabled() -> bool:
    """Whether this process exports spans (and so rewrites the tracing headers)."""
    return _provider is not None


def _api_method(details: Any) -> bool:
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    return str(method).startswith("/ragmesh.")


def configure(settings: ServerSettings, service: str, version: str = "") -> None:
    """Install the propagators and, with an endpoint, the SDK exporting to it."""
    global _provider
    # B3 first: when a call carries both, the W3C context (extracted last) wins.
    propagate.set_global_textmap(
        CompositePropagator(
            [B3MultiFormat(), TraceContextTextMapPropagator(), W3CBaggagePropagator()]
        )
    )
    if not settings.otlp_endpoint or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    endpoint = settings.otlp_endpoint
    attributes = {"service.name": service, "service.namespace": "ragmesh"}
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider


def server_interceptors() -> list[Any]:
    """The gRPC aio server instrumentation (API methods only), when tracing is on."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider, filter_=_api_method)]  # type: ignore[no-untyped-call]


def client_interceptors() -> Sequence[Any]:
    """The gRPC aio client instrumentation, when tracing is on."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider))  # type: ignore[no-untyped-call]


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans still buffered (before a process exits)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def current_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span as hex, or empty strings without one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def carrier() -> dict[str, str]:
    """The current call's request id and trace context, for work that continues later in
    another process (a queued document): pass it to :func:`resume` there."""
    ctx = callcontext.current()
    out: dict[str, str] = {}
    if ctx is not None:
        keep = {callcontext.REQUEST_ID_KEY} | (set() if enabled() else TRACE_HEADERS)
        out = {k: v for k, v in ctx.headers if k in keep}
    if enabled():
        propagate.inject(out)  # the current span's context
    return out


@contextlib.contextmanager
def resume(
    carried: Mapping[str, str], name: str, attributes: Mapping[str, str | int]
) -> Iterator[None]:
    """Continue what :func:`carrier` handed over: its request id bound for logs and outbound
    calls, and a CONSUMER span ``name`` in its trace."""
    ctx = callcontext.from_metadata(carried.items(), None)  # keeps well-formed values only
    token = callcontext.bind(ctx)
    parent = propagate.extract(dict(ctx.headers)) if enabled() else None
    try:
        with tracer.start_as_current_span(
            name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ):
            yield
    finally:
        callcontext.unbind(token)
