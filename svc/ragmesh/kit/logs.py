"""JSON log lines: one object per line with the call's correlation ids.

Every line carries ``timestamp`` (UTC, RFC 3339), ``level``, ``service``, ``logger`` and
``message``; inside an RPC also ``request_id`` (Envoy's ``x-request-id``), ``trace_id`` and,
with tracing on, ``span_id`` of the current span (off: the trace id from the W3C
``traceparent`` or B3 headers the call arrived with, and the caller's span id). The access log adds
``method``, ``grpc_code`` and ``duration_ms``. Messages never carry request bodies: the
access log names the method, not what was asked.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

from ragmesh.kit import callcontext, tracing

#: fields a log call may add with ``extra=``
EXTRA_FIELDS = ("method", "grpc_code", "duration_ms", "peer")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = callcontext.current()
        if ctx is not None:
            line["request_id"] = ctx.request_id
        trace_id, span_id = tracing.current_ids()
        if trace_id:  # the span this process is in (tracing on)
            line["trace_id"], line["span_id"] = trace_id, span_id
        elif ctx is not None and ctx.trace_id:  # tracing off: the sidecar's span
            line["trace_id"] = ctx.trace_id
            if ctx.span_id:
                line["span_id"] = ctx.span_id
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, service: str) -> None:
    """Send every logger's records to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
