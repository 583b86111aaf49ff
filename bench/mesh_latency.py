"""Added latency of one sidecar pair with mTLS, for Search on loopback.

A real retrieval service (1,000 chunks, flat index) is called with one 384-d query and
top_k 10: directly on its loopback port, and through query's sidecar (outbound listener,
mTLS origination, retry policy) and retrieval's sidecar (mTLS termination, RBAC). The two
paths alternate in rounds on the same connection pattern; the added time is mesh - direct
per round. Usage: python bench/mesh_latency.py [--rounds 5] [--calls 400]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from ragmesh.cli.supervisor import free_port
from ragmesh.meshlab.lab import MeshLab
from ragmesh.v1 import common_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def timed_calls(stub: retrieval_service_pb2_grpc.RetrievalServiceStub, n: int) -> list[float]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        v = rng.standard_normal(DIM).astype("<f4")
        request = retrieval_service_pb2.SearchRequest(
            queries=common_pb2.VectorBatch(count=1, dimension=DIM, data=v.tobytes()), top_k=10
        )
        start = time.perf_counter()
        stub.Search(request, timeout=5)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = MeshLab(ROOT, Path(tmp))
        try:
            for workload in ("redis", "embedding", "retrieval", "generation", "query"):
                lab.plan(workload, 1)
            app = lab.start_workload("retrieval", 0)
            lab.stack.wait_ready(app.name)
            query, _ = lab.start_workload_sidecar("query", 0, free_port(), free_port())
            rng = np.random.default_rng(1)
            with grpc.insecure_channel(app.address) as channel:
                retrieval_service_pb2_grpc.RetrievalServiceStub(channel).Upsert(
                    retrieval_service_pb2.UpsertRequest(
                        chunks=[
                            retrieval_service_pb2.Chunk(
                                chunk_id=f"c{i}",
                                document_id=f"d{i // 10}",
                                text=f"chunk {i}",
                                vector=rng.standard_normal(DIM).astype("<f4").tobytes(),
                            )
                            for i in range(1000)
                        ]
                    ),
                    timeout=30,
                )
            direct = grpc.insecure_channel(app.address)
            mesh = grpc.insecure_channel(f"127.0.0.1:{query.outbound['retrieval']}")
            stubs = {
                "direct": retrieval_service_pb2_grpc.RetrievalServiceStub(direct),
                "mesh": retrieval_service_pb2_grpc.RetrievalServiceStub(mesh),
            }
            for stub in stubs.values():
                timed_calls(stub, 100)  # warm up connections and caches
            rows = []
            for _ in range(args.rounds):
                d = timed_calls(stubs["direct"], args.calls)
                m = timed_calls(stubs["mesh"], args.calls)
                rows.append(
                    (
                        statistics.median(d),
                        percentile(d, 99),
                        statistics.median(m),
                        percentile(m, 99),
                    )
                )
            direct.close()
            mesh.close()
        finally:
            lab.down()
    header = ("round", "direct p50", "direct p99", "mesh p50", "mesh p99", "added p50", "added p99")
    print("| " + " | ".join(header) + " |  (ms)")
    print("|---|---|---|---|---|---|---|")
    for i, (dp50, dp99, mp50, mp99) in enumerate(rows, 1):
        print(
            f"| {i} | {dp50:.3f} | {dp99:.3f} | {mp50:.3f} | {mp99:.3f} | "
            f"{mp50 - dp50:.3f} | {mp99 - dp99:.3f} |"
        )
    added50 = [r[2] - r[0] for r in rows]
    added99 = [r[3] - r[1] for r in rows]
    print(
        f"added by one sidecar pair: p50 {min(added50):.3f}–{max(added50):.3f} ms, "
        f"p99 {min(added99):.3f}–{max(added99):.3f} ms"
    )


if __name__ == "__main__":
    main()
