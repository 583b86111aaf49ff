"""Prometheus metrics of the gRPC server, named as go-grpc-prometheus names them.

Flagger's documented gRPC MetricTemplate and the project's own templates read these names.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

_LABELS = ("grpc_type", "grpc_service", "grpc_method")

STARTED = Counter("grpc_server_started", "RPCs started on the server.", _LABELS)
HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server, by status code.", (*_LABELS, "grpc_code")
)
HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its status, in seconds.",
    _LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MSG_SENT = Counter("grpc_server_msg_sent", "Stream messages sent by the server.", _LABELS)


class MethodMetrics:
    """The series of one method, looked up once when its handler is wrapped rather than on
    every call (a label lookup costs more than the increment)."""

    def __init__(self, full_method: str, grpc_type: str) -> None:
        _, _, rest = full_method.partition("/")
        service, _, method = rest.partition("/")
        self.labels = (grpc_type, service, method)
        self.started = STARTED.labels(*self.labels)
        self.sent = MSG_SENT.labels(*self.labels)
        self.seconds = HANDLING_SECONDS.labels(*self.labels)
        self._handled: dict[str, Counter] = {}

    def handled(self, code: str, start: float) -> None:
        """Count a finished call under its status code and observe its duration."""
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = HANDLED.labels(*self.labels, code)
        counter.inc()
        self.seconds.observe(time.perf_counter() - start)
