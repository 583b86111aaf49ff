"""Structured logs read from a running service: every line is one JSON object; each API call
gets one access line with the request id Envoy sent, the trace and span ids of its
traceparent, the method, the status and the duration (with tracing on, the ids of the
service's own span: tests/mesh/test_system.py); document texts never reach the log at INFO."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from ragmesh.kit import cpus
from ragmesh.v1 import retrieval_service_pb2, retrieval_service_pb2_grpc
from ragmesh_lab.cli.supervisor import COMPUTE_SERVICES, Stack

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SECRET_TEXT = "the harbour master keeps the spare key under the third bollard"


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("logs"))
    try:
        stack.start_service("retrieval", env={"RAGMESH_LOG_LEVEL": "INFO"})
        stack.wait_ready("retrieval")
        yield stack
    finally:
        stack.down()


def lines(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    """The service's JSON lines for ``request_id``, once its access line is written."""
    deadline = time.monotonic() + 10
    while True:
        raw = [ln for ln in stack.procs["retrieval"].output().splitlines() if ln.strip()]
        parsed = [json.loads(ln) for ln in raw]  # a line that is not JSON fails here
        found = [p for p in parsed if p.get("request_id") == request_id]
        if any(p["logger"] == "ragmesh.access" for p in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def call(stack: Stack, request_id: str, request: Any, method: str = "Upsert") -> None:
    with grpc.insecure_channel(stack.procs["retrieval"].address) as channel:
        stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
        metadata = (
            ("x-request-id", request_id),
            ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01"),
        )
        try:
            getattr(stub, method)(request, metadata=metadata, timeout=10)
        except grpc.RpcError:
            pass


def upsert(text: str, dims: int = 384) -> retrieval_service_pb2.UpsertRequest:
    vector = (np.ones(dims) / np.sqrt(dims)).astype("<f4")
    return retrieval_service_pb2.UpsertRequest(
        tenant="default",
        chunks=[
            retrieval_service_pb2.Chunk(
                chunk_id="doc-1#0", document_id="doc-1", text=text, vector=vector.tobytes()
            )
        ],
    )


def test_every_line_is_json_and_startup_names_the_service(retrieval: Stack) -> None:
    raw = [ln for ln in retrieval.procs["retrieval"].output().splitlines() if ln.strip()]
    parsed = [json.loads(ln) for ln in raw]
    ready = [p for p in parsed if "listening: grpc" in p["message"]]
    assert ready and ready[0]["service"] == "retrieval" and ready[0]["level"] == "INFO"
    assert ready[0]["timestamp"].endswith("Z")


def test_startup_logs_the_compute_pool_it_sized(retrieval: Stack) -> None:
    """The local stack gives each compute service its share of the machine's CPUs."""
    share = max(1, cpus.available() // COMPUTE_SERVICES)
    parsed = [json.loads(ln) for ln in retrieval.procs["retrieval"].output().splitlines() if ln]
    pools = [p["message"] for p in parsed if p["logger"] == "ragmesh.kit.cpus"]
    assert pools == [
        f"compute threads: {share} (RAGMESH_COMPUTE_THREADS; "
        f"{len(os.sched_getaffinity(0))} CPUs in the affinity mask)"
    ]


def test_a_call_logs_one_access_line_with_its_correlation_ids(retrieval: Stack) -> None:
    call(retrieval, "req-ok-1", upsert(SECRET_TEXT))
    access = [p for p in lines(retrieval, "req-ok-1") if p["logger"] == "ragmesh.access"]
    assert len(access) == 1, access
    line = access[0]
    assert line["method"] == "/ragmesh.v1.RetrievalService/Upsert"
    assert line["grpc_code"] == "OK" and line["trace_id"] == TRACE
    assert line["span_id"] == "00f067aa0ba902b7"  # tracing off: the sidecar's span
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["service"] == "retrieval" and line["level"] == "INFO"


def test_a_rejected_call_logs_its_status(retrieval: Stack) -> None:
    call(retrieval, "req-bad-1", upsert("x", dims=3))
    access = [p for p in lines(retrieval, "req-bad-1") if p["logger"] == "ragmesh.access"]
    assert [p["grpc_code"] for p in access] == ["INVALID_ARGUMENT"]


def test_document_text_never_reaches_the_log(retrieval: Stack) -> None:
    call(retrieval, "req-ok-2", upsert(SECRET_TEXT))
    lines(retrieval, "req-ok-2")
    assert SECRET_TEXT not in retrieval.procs["retrieval"].output()
