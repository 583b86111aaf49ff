"""Istio's standard metrics for the rehearsal, from the real sidecars' access logs.

In a cluster, istio-proxy's stats filter counts every request a sidecar serves as
``istio_requests_total`` and ``istio_request_duration_milliseconds`` with the
``reporter="destination"`` labels the MetricTemplates select on. The local mesh runs upstream
Envoy, which has no such filter, so this exporter reads each inbound sidecar's access log (one
line per request: status, gRPC status, verified peer, duration; see meshlab/envoy.py
ACCESS_LOG_FORMAT) and serves the same series on ``/metrics`` for the rehearsal's Prometheus.
The counts are the sidecars'.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

LINE = re.compile(
    r'^inbound \[[^\]]*\] "(?P<method>\S+) (?P<path>\S+) (?P<proto>\S+)" (?P<code>\d+) '
    r'grpc=(?P<grpc>\S+) .*? peer="(?P<peer>[^"]*)" upstream=\S+ (?P<ms>\d+)ms'
)
#: Envoy's %GRPC_STATUS% names (Go's) → the number Istio puts in grpc_response_status
GRPC_CODES = {
    "".join(p.capitalize() for p in c.name.split("_")) if c != grpc.StatusCode.OK else "OK": str(
        c.value[0]
    )
    for c in grpc.StatusCode
}
BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


@dataclass
class Source:
    """One sidecar's access log and the workload it reports for."""

    log: Path
    workload: str
    namespace: str
    offset: int = 0


@dataclass
class IstioTelemetry:
    sources: list[Source] = field(default_factory=list)
    requests: Counter[tuple[str, ...]] = field(default_factory=Counter)
    #: labels → (cumulative count per bucket of BUCKETS and +Inf, sum of milliseconds)
    durations: dict[tuple[str, ...], tuple[list[int], float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def watch(self, log: Path, workload: str, namespace: str) -> None:
        """Count the requests ``log``'s sidecar serves from now on, for ``workload``."""
        offset = log.stat().st_size if log.exists() else 0
        with self.lock:
            self.sources.append(Source(log, workload, namespace, offset))

    def collect(self) -> None:
        with self.lock:
            for source in self.sources:
                if not source.log.exists():
                    continue
                with open(source.log, "rb") as f:
                    f.seek(source.offset)
                    data = f.read()
                end = data.rfind(b"\n") + 1  # whole lines only
                source.offset += end
                for raw in data[:end].decode(errors="replace").splitlines():
                    self._count(source, raw)

    def _count(self, source: Source, line: str) -> None:
        m = LINE.match(line)
        if not m:
            return
        grpc_status = GRPC_CODES.get(m["grpc"], "")
        protocol = "grpc" if grpc_status else "http"
        peer = m["peer"].rsplit("/sa/", 1)[-1] if "/sa/" in m["peer"] else "unknown"
        labels = (
            "destination",
            protocol,
            source.workload,
            source.namespace,
            peer.removeprefix("ragmesh-"),
            m["code"],
            grpc_status,
        )
        self.requests[labels] += 1
        ms = float(m["ms"])
        counts, total = self.durations.get(labels, ([0] * (len(BUCKETS) + 1), 0.0))
        for i, le in enumerate((*BUCKETS, math.inf)):
            if ms <= le:
                counts[i] += 1
        self.durations[labels] = (counts, total + ms)

    def exposition(self) -> str:
        self.collect()
        names = (
            "reporter",
            "request_protocol",
            "destination_workload",
            "destination_workload_namespace",
            "source_workload",
            "response_code",
            "grpc_response_status",
        )

        def fmt(labels: tuple[str, ...], extra: str = "") -> str:
            pairs = ",".join(f'{n}="{v}"' for n, v in zip(names, labels, strict=True))
            return "{" + pairs + extra + "}"

        out = ["# TYPE istio_requests_total counter"]
        with self.lock:
            for labels, n in sorted(self.requests.items()):
                out.append(f"istio_requests_total{fmt(labels)} {n}")
            out.append("# TYPE istio_request_duration_milliseconds histogram")
            name = "istio_request_duration_milliseconds"
            for labels, (counts, total) in sorted(self.durations.items()):
                for le, count in zip((*BUCKETS, math.inf), counts, strict=True):
                    bound = "+Inf" if math.isinf(le) else str(le)
                    out.append(f"{name}_bucket{fmt(labels, ',le=' + json.dumps(bound))} {count}")
                out.append(f"{name}_sum{fmt(labels)} {total}")
                out.append(f"{name}_count{fmt(labels)} {counts[-1]}")
        return "\n".join(out) + "\n"

    def serve(self) -> int:
        """Serve /metrics on a free loopback port; the port."""
        telemetry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = telemetry.exposition().encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
