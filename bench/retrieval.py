"""Retrieval: Search over gRPC on each backend (embedded FAISS, a Milvus server) vs the same
FAISS index in process vs Milvus Lite, on clustered 384-d unit vectors, one query per call
and 64 per call, at measured recall@10; and Upsert throughput on each backend."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench import floor
from bench.common import (
    ROOT,
    Section,
    Spread,
    Target,
    client_cpus,
    on_cpus,
    peer_python,
    run_json,
    server_cpus,
    start_pinned,
)
from bench.vectors import Dataset, K, clustered, search_result
from ragmesh.v1 import common_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from ragmesh_lab.cli.milvus import start_milvus
from ragmesh_lab.cli.supervisor import PROCESS_ENV, Stack

TEXT = "A passage of about two hundred characters stands in for each chunk's text, as a " * 3
BATCH = 64
MILVUS_INDEX = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}


def _vectors(rows: np.ndarray) -> common_pb2.VectorBatch:
    return common_pb2.VectorBatch(
        count=len(rows), dimension=rows.shape[1], data=rows.astype("<f4").tobytes()
    )


def load(stub: retrieval_service_pb2_grpc.RetrievalServiceStub, base: np.ndarray) -> float:
    """Upsert every vector (1,000 chunks a call); returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(base), 1000):
        stub.Upsert(
            retrieval_service_pb2.UpsertRequest(
                tenant="default",
                chunks=[
                    retrieval_service_pb2.Chunk(
                        chunk_id=str(i),
                        document_id=f"d{i // 10}",
                        text=TEXT[:200],
                        vector=base[i].astype("<f4").tobytes(),
                    )
                    for i in range(start, min(start + 1000, len(base)))
                ],
            ),
            timeout=600,
        )
    return time.perf_counter() - started


def measure(
    stub: retrieval_service_pb2_grpc.RetrievalServiceStub, data: Dataset, single: int, batches: int
) -> dict[str, float]:
    """The same protocol as bench.inprocess.search, through the service."""
    found: list[list[int]] = []
    latencies = []
    for q in data.queries[:single]:
        request = retrieval_service_pb2.SearchRequest(
            tenant="default", queries=_vectors(q[None, :]), top_k=K
        )
        t = time.perf_counter()
        reply = stub.Search(request, timeout=10)
        latencies.append((time.perf_counter() - t) * 1000)
        found.append([int(p.chunk_id) for p in reply.results[0].passages])
    requests = [
        retrieval_service_pb2.SearchRequest(
            tenant="default",
            queries=_vectors(data.queries[(b * BATCH) % len(data.queries) :][:BATCH]),
            top_k=K,
        )
        for b in range(batches)
    ]
    t = time.perf_counter()
    done = 0
    for request in requests:
        reply = stub.Search(request, timeout=60)
        done += len(reply.results)
    return search_result(latencies, found, data.truth, done, time.perf_counter() - t)


def run(quick: bool, repeats: int, kinds: tuple[str, ...] = ("flat", "hnsw", "ivf")) -> Section:
    """Quick mode measures Milvus Lite on the flat index only (its HNSW build alone takes
    minutes here), and ragmesh on the Milvus server on flat and HNSW."""
    n = 100_000
    milvus_kinds = ("flat",) if quick else kinds
    server_kinds = ("flat", "hnsw") if quick else kinds
    single = (
        {"flat": 300, "hnsw": 2000, "ivf": 1000}
        if quick
        else {"flat": 1000, "hnsw": 5000, "ivf": 3000}
    )
    batches = {"flat": 5, "hnsw": 30, "ivf": 15} if quick else {"flat": 15, "hnsw": 100, "ivf": 50}
    section = Section(
        "retrieval",
        "Retrieval: Search and Upsert over gRPC on FAISS and on a Milvus server, vs FAISS in "
        "process and Milvus Lite",
        f"{n:,} clustered 384-d unit vectors (1,000 clusters), held-out queries, top_k 10, "
        f"200-character chunk texts; one query per call (sequential) and {BATCH} per call. "
        "Indexes at ragmesh's defaults: flat; HNSW M 32, efSearch 64; IVF 256 lists, "
        "nprobe 16. Milvus Lite and the Milvus server (2.3.5 standalone, local storage) use "
        "the same index types and parameters. Services and in-process runs on the server "
        "cores, clients on the client core; the Milvus server is not pinned (it uses every "
        "core). Upsert: 1,000 chunks a call, acknowledged = durable.",
        [
            "index",
            "system",
            "recall@10",
            "single QPS",
            "single p50 ms",
            "single p99 ms",
            f"batched QPS ({BATCH}/call)",
            "upsert chunks/s",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
        folder = Path(tmp) / "vectors"
        clustered(n, 5000).save(folder)
        data = Dataset.load(folder)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for kind in kinds:
            stack = Stack(Path(tmp) / f"stack-{kind}")
            try:
                proc = start_pinned(
                    stack,
                    "retrieval",
                    "retrieval",
                    {"RAGMESH_INDEX_KIND": kind, "RAGMESH_INDEX_DIR": str(Path(tmp) / kind)},
                )
                with (
                    on_cpus(client_cpus()),
                    grpc.insecure_channel(
                        proc.address, options=[("grpc.max_receive_message_length", 1 << 26)]
                    ) as channel,
                ):
                    stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
                    loaded = load(stub, data.base)
                    section.notes.append(f"{kind}: loading {n:,} chunks took {loaded:.0f} s")
                    measure(stub, data, 200, 2)  # warm up
                    for _ in range(repeats):
                        results.setdefault((kind, "ragmesh"), []).append(
                            {
                                **measure(stub, data, single[kind], batches[kind]),
                                "upsert_per_s": n / loaded,
                            }
                        )
                        results.setdefault((kind, "faiss"), []).append(
                            _inprocess(folder, kind, single[kind], batches[kind])
                        )
            finally:
                stack.down()
            if kind in milvus_kinds:
                results[(kind, "milvus")] = [
                    _milvus(
                        folder,
                        kind,
                        30 if quick else 100,
                        3 if quick else 10,
                        Path(tmp) / f"milvus-{kind}-{r}",
                    )
                    for r in range(1 if quick else repeats)
                ]
        results.update(
            _on_milvus_server(
                Path(tmp), data, server_kinds, {k: v // 10 for k, v in single.items()}, batches
            )
        )
        results[("-", "floor")] = [floor.measure(2000 if quick else 5000) for _ in range(repeats)]
    _tabulate(section, results, kinds)
    return section


def _on_milvus_server(
    tmp: Path,
    data: Dataset,
    kinds: tuple[str, ...],
    single: dict[str, int],
    batches: dict[str, int],
) -> dict[tuple[str, str], list[dict[str, float]]]:
    """ragmesh's retrieval on a real Milvus server: load through Upsert, wait until Milvus has
    built the index, then search at each consistency level."""
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    stack = Stack(tmp / "milvus-server")
    try:
        start_milvus(stack)
        uri = stack.env["RAGMESH_MILVUS_URI"]
        for kind in kinds:
            loaded = 0.0
            for consistency in ("strong", "session"):
                name = f"retrieval-milvus-{kind}-{consistency}"
                env = {
                    "RAGMESH_INDEX_KIND": kind,
                    "RAGMESH_MILVUS_COLLECTION": f"bench_{kind}",
                    "RAGMESH_MILVUS_CONSISTENCY": consistency,
                }
                proc = start_pinned(stack, name, "retrieval", env)
                with (
                    on_cpus(client_cpus()),
                    grpc.insecure_channel(
                        proc.address, options=[("grpc.max_receive_message_length", 1 << 26)]
                    ) as channel,
                ):
                    stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
                    if not loaded:
                        loaded = load(stub, data.base)
                        _indexed(uri, f"bench_{kind}", len(data.base))
                    measure(stub, data, 20, 1)  # warm up
                    results[(kind, f"milvus-{consistency}")] = [
                        {
                            **measure(stub, data, single[kind], batches[kind]),
                            "upsert_per_s": len(data.base) / loaded,
                        }
                    ]
                stack.kill(name, 15)
    finally:
        stack.down()
    return results


def _indexed(uri: str, collection: str, rows: int, timeout: float = 600) -> None:
    """Seal the collection's segments and wait until Milvus has indexed every row."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        client.flush(collection)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            index = client.describe_index(collection, "vector")
            if int(index.get("indexed_rows", 0)) >= rows:
                return
            time.sleep(2)
        raise SystemExit(f"milvus did not index {collection} in {timeout:.0f} s: {index}")
    finally:
        client.close()


def _inprocess(folder: Path, kind: str, single: int, batches: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.inprocess", "faiss", "--data", str(folder), "--kind", kind]
    argv += ["--single", str(single), "--batches", str(batches), "--batch", str(BATCH)]
    # the service's process environment (huge pages for malloc): the same FAISS on both sides
    env = {"PYTHONPATH": str(ROOT), **PROCESS_ENV["retrieval"]}
    result = run_json(argv, cpus=server_cpus(), env=env)
    assert isinstance(result, dict)
    return result


def _milvus(folder: Path, kind: str, single: int, batches: int, db: Path) -> dict[str, float]:
    argv = [str(peer_python("milvus")), str(ROOT / "bench" / "peers" / "milvus_search.py")]
    argv += ["--data", str(folder), "--index", MILVUS_INDEX[kind], "--db", str(db)]
    argv += ["--single", str(single), "--batches", str(batches), "--batch", str(BATCH)]
    # Milvus Lite runs inside its client; the client imports bench.vectors from here
    result = run_json(argv, cpus=server_cpus(), env={"PYTHONPATH": str(ROOT)})
    assert isinstance(result, dict)
    return result


def _tabulate(
    section: Section, results: dict[tuple[str, str], list[dict[str, float]]], kinds: tuple[str, ...]
) -> None:
    def spread(kind: str, system: str, key: str) -> Spread:
        return Spread([r[key] for r in results[(kind, system)]])

    floors = Spread([r["p50_ms"] for r in results[("-", "floor")]])
    names = {
        "ragmesh": "ragmesh Search (gRPC), FAISS backend",
        "milvus-strong": "ragmesh Search (gRPC), Milvus server, strong",
        "milvus-session": "ragmesh Search (gRPC), Milvus server, session",
        "faiss": "FAISS in process",
        "milvus": "Milvus Lite",
    }
    for kind in kinds:
        for system in names:
            if (kind, system) not in results:
                continue
            upserts = [r["upsert_per_s"] for r in results[(kind, system)] if "upsert_per_s" in r]
            section.rows.append(
                [
                    kind,
                    names[system],
                    spread(kind, system, "recall").text(3),
                    spread(kind, system, "single_qps").text(0),
                    spread(kind, system, "single_p50_ms").text(3),
                    spread(kind, system, "single_p99_ms").text(3),
                    spread(kind, system, "batched_qps").text(0),
                    Spread(upserts).text(0) if upserts else "",
                ]
            )
        ours, base = results[(kind, "ragmesh")], results[(kind, "faiss")]
        for mode in ("single", "batched"):
            section.targets.append(
                Target(
                    "retrieval",
                    f"{kind} {mode}: ragmesh QPS / in-process FAISS QPS",
                    Spread(
                        [
                            o[f"{mode}_qps"] / b[f"{mode}_qps"]
                            for o, b in zip(ours, base, strict=True)
                        ]
                    ),
                    ">=",
                    0.9,
                )
            )
        section.targets.append(
            Target(
                "retrieval",
                f"{kind} single: added p50 (ragmesh − in-process)",
                Spread(
                    [
                        o["single_p50_ms"] - b["single_p50_ms"]
                        for o, b in zip(ours, base, strict=True)
                    ]
                ),
                "<=",
                0.5,
                "ms",
                detail=f"a bare grpc.aio round trip is {floors.median:.3f} ms p50",
            )
        )
        if (kind, "milvus") in results:
            milvus = results[(kind, "milvus")]
            for mode in ("single", "batched"):
                section.targets.append(
                    Target(
                        "retrieval",
                        f"{kind} {mode}: ragmesh QPS / Milvus Lite QPS",
                        Spread([o[f"{mode}_qps"] / m[f"{mode}_qps"] for o in ours for m in milvus]),
                        ">=",
                        2.0,
                        detail="recall@10 {:.3f} vs {:.3f}".format(
                            Spread([o["recall"] for o in ours]).median,
                            Spread([m["recall"] for m in milvus]).median,
                        ),
                    )
                )
    section.rows.append(
        [
            "—",
            "bare grpc.aio Health.Check (the floor, no ragmesh)",
            "",
            "",
            floors.text(3),
            Spread([r["p99_ms"] for r in results[("-", "floor")]]).text(3),
            "",
            "",
        ]
    )
    section.series = {
        f"{kind}/{system}": {
            k: Spread([r[k] for r in rs]).median for k in ("single_qps", "batched_qps", "recall")
        }
        for (kind, system), rs in results.items()
        if system != "floor"
    }


def profile_data(address: str) -> Dataset:
    """Load an index of 20,000 clustered vectors for a profile."""
    data = clustered(20_000, 1000)
    with grpc.insecure_channel(address) as channel:
        load(retrieval_service_pb2_grpc.RetrievalServiceStub(channel), data.base)
    return data


def profile_load(address: str, data: Dataset, seconds: float) -> None:
    """Search one query per call for ``seconds``."""
    with grpc.insecure_channel(address) as channel:
        stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            measure(stub, data, 200, 1)
