"""A small OTLP/gRPC trace receiver for the local mesh, and a reader that prints trace trees.

No Jaeger or collector runs locally: ``ragmesh mesh up --trace`` starts this receiver
(``python -m ragmesh_lab.meshlab.traces``); the Envoys' OpenTelemetry tracer and the services'
OTLP exporters send their spans to it, and it appends one JSON object per span to a file.
``ragmesh traces`` reads that file and prints each trace as a tree of spans.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
}
STATUS = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class Span:
    """One received span, flattened (ids as lowercase hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def to_json(self) -> str:
        value = dict(self.__dict__)
        value["events"] = list(self.events)
        return json.dumps(value, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Span:
        value = json.loads(line)
        value["events"] = tuple(value["events"])
        return cls(**value)


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which) if which else None


def _attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """The spans of one OTLP export request."""
    spans = []
    for resource_spans in request.resource_spans:
        service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
        for scope in resource_spans.scope_spans:
            for s in scope.spans:
                spans.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=KINDS.get(s.kind, "unspecified"),
                        service=service,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status=STATUS.get(s.status.code, "unset"),
                        attributes=_attributes(s.attributes),
                        events=tuple(e.name for e in s.events),
                    )
                )
    return spans


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span in memory and hands each batch to ``sink``."""

    def __init__(self, sink: Callable[[Sequence[Span]], None] | None = None) -> None:
        self.spans: list[Span] = []
        self._sink = sink
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the OTLP method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        batch = flatten(request)
        with self._lock:
            self.spans.extend(batch)
            if self._sink is not None:
                self._sink(batch)
        return trace_service_pb2.ExportTraceServiceResponse()


def serve(receiver: Receiver, port: int = 0, host: str = "127.0.0.1") -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``receiver``; returns it and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def appender(path: Path) -> Callable[[Sequence[Span]], None]:
    """A sink appending each span to ``path`` as one JSON line."""

    def write(batch: Sequence[Span]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.writelines(s.to_json() + "\n" for s in batch)

    return write


def read(path: Path) -> list[Span]:
    """The spans a receiver wrote to ``path``."""
    if not path.exists():
        return []
    return [Span.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def group(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans by trace id, in order of each trace's first start."""
    traces: dict[str, list[Span]] = {}
    for s in sorted(spans, key=lambda s: s.start_ns):
        traces.setdefault(s.trace_id, []).append(s)
    return traces


def render(spans: Sequence[Span]) -> str:
    """One trace as an indented tree: service, kind, name, duration, events."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for s in sorted(spans, key=lambda s: s.start_ns):
        if s.parent_span_id and s.parent_span_id in ids:
            children.setdefault(s.parent_span_id, []).append(s)
        else:
            roots.append(s)
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    lines = [f"trace {spans[0].trace_id}  {len(spans)} spans  {(end - start) / 1e6:.1f} ms"]

    def walk(s: Span, depth: int) -> None:
        missing = " (parent not received)" if s.parent_span_id and depth == 0 else ""
        events = f"  [{', '.join(s.events)}]" if s.events else ""
        error = "  ERROR" if s.status == "error" else ""
        lines.append(
            f"{'  ' * (depth + 1)}{s.service} {s.kind} {s.name}  "
            f"+{(s.start_ns - start) / 1e6:.1f} ms  {s.duration_ms:.1f} ms{events}{error}{missing}"
        )
        for c in children.get(s.span_id, []):
            walk(c, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="OTLP/gRPC trace receiver writing JSON lines")
    p.add_argument("--port", type=int, default=4317)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server, port = serve(Receiver(appender(args.out)), args.port, args.host)
    print(f"otlp receiver on {args.host}:{port}, spans to {args.out}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
