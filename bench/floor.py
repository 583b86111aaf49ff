"""The floor under every unary call: a bare ``grpc.aio`` server (the library's health
servicer, no interceptors, nothing of ragmesh) on the server cores, called one request at
a time by a sync client on the client core. Added latency of a Python gRPC service cannot
go below this round trip.

    python -m bench.floor serve   # prints its port, serves until killed
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.common import ROOT, client_cpus, on_cpus, percentile, pinned, server_cpus


async def _serve() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def measure(calls: int) -> dict[str, float]:
    """p50 and p99 (ms) of ``calls`` sequential Health.Check round trips to a bare server."""
    argv = pinned([sys.executable, "-m", "bench.floor", "serve"], server_cpus())
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with on_cpus(client_cpus()), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest()
            check(request, timeout=10, wait_for_ready=True)
            for _ in range(calls // 5):  # warm up
                check(request, timeout=10)
            latencies = []
            for _ in range(calls):
                t = time.perf_counter()
                check(request, timeout=10)
                latencies.append((time.perf_counter() - t) * 1000)
    finally:
        server.kill()
        server.wait()
    return {"p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        raise SystemExit(__doc__)
    asyncio.run(_serve())
