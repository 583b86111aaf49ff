"""The local OTLP receiver (``ragmesh mesh up --trace``) fed by the OpenTelemetry SDK's own
OTLP/gRPC exporter, the JSON-lines file it writes, and the trace tree ``ragmesh traces``
prints."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from ragmesh_lab.meshlab import traces


def test_sdk_spans_arrive_with_their_parents_and_render_as_a_tree(tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    receiver = traces.Receiver(traces.appender(out))
    server, port = traces.serve(receiver)
    provider = TracerProvider(resource=Resource.create({"service.name": "query"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True))
    )
    tracer = provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("/ragmesh.v1.QueryService/Ask", kind=SpanKind.SERVER):
            with tracer.start_as_current_span("cache.lookup") as lookup:
                lookup.set_attributes({"ragmesh.cache": "answer", "n": 3, "ok": True})
                lookup.add_event("first_token")
            with tracer.start_as_current_span("failing") as failing:
                failing.set_status(Status(StatusCode.ERROR))
        provider.force_flush()
    finally:
        provider.shutdown()
        server.stop(None)

    spans = traces.read(out)
    assert len(spans) == 3 and sorted(receiver.spans, key=str) == sorted(spans, key=str)
    assert {s.name for s in spans} == {"/ragmesh.v1.QueryService/Ask", "cache.lookup", "failing"}
    by_name = {s.name: s for s in spans}
    root = by_name["/ragmesh.v1.QueryService/Ask"]
    assert root.parent_span_id == "" and root.kind == "server" and root.service == "query"
    lookup_span = by_name["cache.lookup"]
    assert lookup_span.parent_span_id == root.span_id and lookup_span.kind == "internal"
    assert lookup_span.attributes == {"ragmesh.cache": "answer", "n": 3, "ok": True}
    assert lookup_span.events == ("first_token",)
    assert by_name["failing"].status == "error"
    assert len({s.trace_id for s in spans}) == 1 and len(root.trace_id) == 32

    tree = traces.render(traces.group(spans)[root.trace_id]).splitlines()
    assert tree[0].startswith(f"trace {root.trace_id}  3 spans")
    assert tree[1].startswith("  query server /ragmesh.v1.QueryService/Ask")
    assert tree[2].startswith("    query internal cache.lookup") and "[first_token]" in tree[2]
    assert tree[3].startswith("    query internal failing") and tree[3].endswith("ERROR")


def test_a_span_whose_parent_never_arrived_is_shown_as_such() -> None:
    span = traces.Span("a" * 32, "b" * 16, "c" * 16, "orphan", "server", "x", 0, 1_000_000, "ok")
    assert traces.Span.from_json(span.to_json()) == span
    tree = traces.render([span])
    assert "x server orphan" in tree and "(parent not received)" in tree
