"""JSON log lines written by the writer thread still carry the ids of the call that logged
them, its traceback, and nothing is lost at close."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ragmesh.kit import callcontext, logs


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    logs.configure("INFO", "unit")
    try:
        yield out
    finally:
        logs.close()
        root.handlers[:], level = saved
        root.setLevel(level)


def written(out: io.StringIO) -> list[dict[str, Any]]:
    logs.close()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_logged_in_a_call_carries_its_ids_after_the_call_ended(
    stderr: io.StringIO,
) -> None:
    ctx = callcontext.from_metadata(
        [("x-request-id", "req-7"), ("traceparent", f"00-{'a' * 32}-{'b' * 16}-01")], None
    )
    token = callcontext.bind(ctx)
    logging.getLogger("ragmesh.access").info(
        "%s %s", "/ragmesh.v1.X/Y", "OK", extra={"method": "/ragmesh.v1.X/Y", "grpc_code": "OK"}
    )
    callcontext.unbind(token)  # the writer formats later, outside the call
    logging.getLogger("other").warning("outside")
    inside, outside = written(stderr)
    assert inside["request_id"] == "req-7"
    assert (inside["trace_id"], inside["span_id"]) == ("a" * 32, "b" * 16)
    assert inside["message"] == "/ragmesh.v1.X/Y OK" and inside["grpc_code"] == "OK"
    assert inside["service"] == "unit" and inside["logger"] == "ragmesh.access"
    assert "request_id" not in outside and outside["level"] == "WARNING"


def test_an_exception_keeps_its_traceback(stderr: io.StringIO) -> None:
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logging.getLogger("ragmesh.test").exception("failed")
    (line,) = written(stderr)
    assert line["message"] == "failed" and line["level"] == "ERROR"
    assert "ZeroDivisionError: division by zero" in line["exception"]


def test_every_queued_line_is_written_by_close(stderr: io.StringIO) -> None:
    log = logging.getLogger("ragmesh.burst")
    for i in range(2000):
        log.info("line %d", i)
    assert [line["message"] for line in written(stderr)] == [f"line {i}" for i in range(2000)]


def test_a_line_names_who_called_and_the_end_user_never_the_token(stderr: io.StringIO) -> None:
    """The audit trail: the caller's verified workload identity (from its sidecar) and, at
    the front door, the end user's subject and tenant (written by the ingress gateway)."""
    ctx = callcontext.from_metadata(
        [
            ("x-forwarded-client-cert", 'By=spiffe://cluster.local/ns/rag-prod/sa/ragmesh-query;'
             'Hash=ab;URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account'),
            ("x-ragmesh-subject", "alice"),
            ("x-ragmesh-tenant", "acme"),
            ("authorization", "Bearer secret.token.value"),
        ],
        None,
    )  # fmt: skip
    token = callcontext.bind(ctx)
    logging.getLogger("ragmesh.access").info("/ragmesh.v1.QueryService/Ask OK")
    callcontext.unbind(token)
    (line,) = written(stderr)
    assert line["caller"] == "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    assert (line["subject"], line["tenant"]) == ("alice", "acme")
    assert "secret" not in stderr.getvalue()
    # none of them is handed on to the calls this one makes
    assert {k for k, _ in ctx.headers} & {"x-ragmesh-subject", "x-ragmesh-tenant"} == set()
