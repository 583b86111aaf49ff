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


def method_labels(full_method: str, grpc_type: str) -> tuple[str, str, str]:
    """Split ``/pkg.Service/Method`` into the label values (type, service, method)."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return grpc_type, service, method


def observe_handled(labels: tuple[str, str, str], code: str, start: float) -> None:
    """Count a finished RPC under its status code and observe its duration."""
    HANDLED.labels(*labels, code).inc()
    HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - start)
