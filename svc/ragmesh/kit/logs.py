"""JSON log lines: one object per line with the call's correlation ids.

Every line carries ``timestamp`` (UTC, RFC 3339), ``level``, ``service``, ``logger`` and
``message``; inside an RPC also ``request_id`` (Envoy's ``x-request-id``), the audit trail
(``caller``: the calling workload's verified identity; at the front door ``subject`` and
``tenant``: the end user the ingress verified; never a token), ``trace_id`` and,
with tracing on, ``span_id`` of the current span (off: the trace id from the W3C
``traceparent`` or B3 headers the call arrived with, and the caller's span id). The access log adds
``method``, ``grpc_code`` and ``duration_ms``. Messages never carry request bodies: the
access log names the method, not what was asked.

Lines are formatted and written on a writer thread (:class:`logging.handlers.QueueListener`),
not on the event loop, so a call's access line is not on its path to the response. The
ids, the message and the traceback are taken in the calling thread, where the call's context
is current; the queue is flushed at exit.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

from ragmesh.kit import callcontext, tracing

#: fields a log call may add with ``extra=``
EXTRA_FIELDS = ("method", "grpc_code", "duration_ms", "peer")


def _ids() -> dict[str, str]:
    """The correlation ids of the current call: request id, trace id and span id."""
    ids: dict[str, str] = {}
    ctx = callcontext.current()
    if ctx is not None:
        ids["request_id"] = ctx.request_id
        for name in ("caller", "subject", "tenant"):  # the audit trail, when known
            if getattr(ctx, name):
                ids[name] = getattr(ctx, name)
    trace_id, span_id = tracing.current_ids()
    if trace_id:  # the span this process is in (tracing on)
        ids["trace_id"], ids["span_id"] = trace_id, span_id
    elif ctx is not None and ctx.trace_id:  # tracing off: the sidecar's span
        ids["trace_id"] = ctx.trace_id
        if ctx.span_id:
            ids["span_id"] = ctx.span_id
    return ids


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
        ids = getattr(record, "ragmesh_ids", None)  # taken by _Handoff in the caller's thread
        line.update(_ids() if ids is None else ids)
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


class _Handoff(logging.handlers.QueueHandler):
    """Queues a copy of the record holding what only the calling thread knows."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)  # other handlers (pytest's) see the original
        record.ragmesh_ids = _ids()
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def close() -> None:
    """Write every queued line and stop the writer thread (at exit, or before reconfiguring)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure(level: str, service: str) -> None:
    """Send every logger's records to stderr as JSON lines at ``level``."""
    close()
    # The logging HOWTO's "Optimization" switches for what a JSON line never shows: the
    # caller's file and line (a stack walk per record), thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(JsonFormatter(service))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, writer)
    root = logging.getLogger()
    root.handlers[:] = [_Handoff(records)]
    root.setLevel(level)
    listener.start()
    global _listener
    _listener = listener


atexit.register(close)
