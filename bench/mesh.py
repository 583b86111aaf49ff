"""Mesh: the added latency of one sidecar pair with mTLS, for Search on loopback."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import ROOT, Section, Spread, Target, percentile
from ragmesh.v1 import common_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from ragmesh_lab.cli.supervisor import free_port
from ragmesh_lab.meshlab.lab import MeshLab

DIM = 384


def timed_calls(stub: retrieval_service_pb2_grpc.RetrievalServiceStub, n: int) -> list[float]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        v = rng.standard_normal(DIM).astype("<f4")
        request = retrieval_service_pb2.SearchRequest(
            tenant="default",
            queries=common_pb2.VectorBatch(count=1, dimension=DIM, data=v.tobytes()),
            top_k=10,
        )
        start = time.perf_counter()
        stub.Search(request, timeout=5)
        out.append((time.perf_counter() - start) * 1000)
    return out


def run(quick: bool, repeats: int) -> Section:
    calls = 200 if quick else 400
    rounds = max(repeats, 3)
    section = Section(
        "mesh",
        "Mesh: Search direct vs through a sidecar pair with mTLS",
        "A retrieval service with 1,000 chunks (flat index), one 384-d query, top_k 10, one "
        "call at a time from a sync client: straight to its port, and through query's "
        "sidecar (outbound listener, mTLS origination, retry policy) and retrieval's "
        "sidecar (mTLS termination, RBAC), both real Envoys configured from the chart's "
        f"rendered mesh objects. The two paths alternate in {rounds} rounds of {calls} "
        "calls; added = mesh − direct per round. Not pinned: the Envoys need both cores.",
        ["round", "direct p50", "direct p99", "mesh p50", "mesh p99", "added p50", "added p99"],
    )
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
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
                        tenant="default",
                        chunks=[
                            retrieval_service_pb2.Chunk(
                                chunk_id=f"c{i}",
                                document_id=f"d{i // 10}",
                                text=f"chunk {i}",
                                vector=rng.standard_normal(DIM).astype("<f4").tobytes(),
                            )
                            for i in range(1000)
                        ],
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
            for _ in range(rounds):
                d = timed_calls(stubs["direct"], calls)
                m = timed_calls(stubs["mesh"], calls)
                rows.append(
                    (percentile(d, 50), percentile(d, 99), percentile(m, 50), percentile(m, 99))
                )
            direct.close()
            mesh.close()
        finally:
            lab.down()
    for i, (dp50, dp99, mp50, mp99) in enumerate(rows, 1):
        section.rows.append(
            [str(i)] + [f"{v:.3f}" for v in (dp50, dp99, mp50, mp99, mp50 - dp50, mp99 - dp99)]
        )
    section.targets.append(
        Target(
            "mesh",
            "added p50 of one sidecar pair with mTLS (Search)",
            Spread([r[2] - r[0] for r in rows]),
            "<=",
            1.0,
            "ms",
            detail="added p99: " + Spread([r[3] - r[1] for r in rows]).text(3) + " ms",
        )
    )
    section.series = {"direct_p50": [r[0] for r in rows], "mesh_p50": [r[2] for r in rows]}
    return section
