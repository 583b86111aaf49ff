"""A million chunks in the FAISS backend (flat and HNSW): resident memory per chunk against
the raw size of vectors plus text, the time a snapshot takes and Search p99 while one is
written, and a crash restart to SERVING (snapshot load plus log replay)."""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from bench.common import (
    ROOT,
    Section,
    Spread,
    Target,
    client_cpus,
    on_cpus,
    percentile,
    start_pinned,
)
from ragmesh.v1 import common_pb2, retrieval_service_pb2, retrieval_service_pb2_grpc
from ragmesh_lab.cli.supervisor import Proc, Stack

DIM = 384
TEXT_CHARS = 200
BATCH = 1000  # chunks per Upsert
TAIL = 10_000  # chunks written after the last snapshot: the log a restart replays
CENTRES = 1000


def corpus_text() -> str:
    """The words of samples/corpus, whitespace collapsed: texts are 200-character windows."""
    words = []
    for path in sorted((ROOT / "samples" / "corpus").iterdir()):
        words += re.sub(r"<[^>]+>", " ", path.read_text()).split()
    return " ".join(words)


class Chunks:
    """Deterministic chunks: clustered unit vectors and 200-character texts."""

    def __init__(self, seed: int = 11) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
        self.text = corpus_text()

    def vectors(self, start: int, count: int) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng(start)
        rows = self.centres[rng.integers(CENTRES, size=count)]
        rows = rows + 0.6 * rng.standard_normal((count, DIM)).astype(np.float32)
        unit: npt.NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(
            np.float32
        )
        return unit

    def texts(self, start: int, count: int) -> list[str]:
        span = len(self.text) - TEXT_CHARS
        return [self.text[(i * 7919) % span :][:TEXT_CHARS] for i in range(start, start + count)]

    def request(self, start: int, count: int) -> retrieval_service_pb2.UpsertRequest:
        vectors = self.vectors(start, count).astype("<f4")
        texts = self.texts(start, count)
        return retrieval_service_pb2.UpsertRequest(
            tenant="default",
            chunks=[
                retrieval_service_pb2.Chunk(
                    chunk_id=f"c{start + i}",
                    document_id=f"d{(start + i) // 10}",
                    text=texts[i],
                    vector=vectors[i].tobytes(),
                )
                for i in range(count)
            ],
        )


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def server_pid(proc: Proc) -> int:
    """The service's own pid (taskset execs it, so it is the process started)."""
    return proc.popen.pid


def searches(
    stub: retrieval_service_pb2_grpc.RetrievalServiceStub,
    queries: npt.NDArray[np.float32],
    stop: Callable[[], bool],
) -> list[float]:
    """Sequential Search top 10 latencies (ms) until ``stop()``."""
    out: list[float] = []
    i = 0
    while not stop():
        q = queries[i % len(queries)]
        request = retrieval_service_pb2.SearchRequest(
            tenant="default",
            queries=common_pb2.VectorBatch(count=1, dimension=DIM, data=q.tobytes()),
            top_k=10,
        )
        t = time.perf_counter()
        stub.Search(request, timeout=120)
        out.append((time.perf_counter() - t) * 1000)
        i += 1
    return out


def deadline(seconds: float) -> Callable[[], bool]:
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() > end


def snapshot_mtime(folder: Path) -> float:
    path = folder / "snapshot.npz"
    return path.stat().st_mtime if path.exists() else 0.0


def one_kind(kind: str, n: int, chunks: Chunks, tmp: Path) -> dict[str, float]:
    stack = Stack(tmp)
    env = {
        "RAGMESH_INDEX_KIND": kind,
        "RAGMESH_INDEX_DIM": str(DIM),
        # one snapshot halfway through loading, the next at the end (measured)
        "RAGMESH_SNAPSHOT_EVERY": str(n // 2),
    }
    queries = chunks.vectors(10**9, 200)
    out: dict[str, float] = {}
    try:
        proc = start_pinned(stack, "retrieval", "retrieval", env)
        out["rss_empty"] = rss_bytes(server_pid(proc))
        folder = tmp / "index"
        with on_cpus(client_cpus()), grpc.insecure_channel(proc.address) as channel:
            stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
            started = time.perf_counter()
            for start in range(0, n - BATCH, BATCH):
                stub.Upsert(chunks.request(start, BATCH), timeout=600)
            out["load_s"] = time.perf_counter() - started
            before = snapshot_mtime(folder)
            searches(stub, queries, deadline(1.0))  # warm
            baseline = searches(stub, queries, deadline(5.0))
            # the last batch reaches the snapshot interval: a snapshot starts after it
            done = threading.Event()
            during: list[float] = []
            stub.Upsert(chunks.request(n - BATCH, BATCH), timeout=600)
            t = time.perf_counter()
            worker = threading.Thread(
                target=lambda: during.extend(searches(stub, queries, done.is_set))
            )
            worker.start()
            while snapshot_mtime(folder) == before:
                time.sleep(0.01)
                if time.perf_counter() - t > 600:
                    raise RuntimeError("no snapshot after 600 s")
            out["snapshot_s"] = time.perf_counter() - t
            done.set()
            worker.join()
            out["rss"] = rss_bytes(server_pid(proc))
            out["peak_rss"] = rss_bytes(server_pid(proc), "VmHWM")
            out["p99"] = percentile(baseline, 99)
            out["p50"] = percentile(baseline, 50)
            out["p99_snapshot"] = percentile(during or [0.0], 99)
            out["searches_snapshot"] = len(during)
            for start in range(n, n + TAIL, BATCH):  # the log a crash leaves behind
                stub.Upsert(chunks.request(start, BATCH), timeout=600)
        stack.kill("retrieval")  # SIGKILL: a crash, no snapshot on the way out
        t = time.perf_counter()
        proc = start_pinned(stack, "retrieval", "retrieval", env, timeout=900)
        out["restart_s"] = time.perf_counter() - t
        with grpc.insecure_channel(proc.address) as channel:
            stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
            info = stub.GetIndexInfo(retrieval_service_pb2.GetIndexInfoRequest(), timeout=30)
        if info.count != n + TAIL:
            raise RuntimeError(f"{info.count} chunks after the restart, {n + TAIL} written")
        out["rss_restarted"] = rss_bytes(server_pid(proc))
    finally:
        stack.down()
    return out


def run(quick: bool, repeats: int) -> Section:
    n = 100_000 if quick else 1_000_000
    raw = n * (DIM * 4 + TEXT_CHARS)
    section = Section(
        "million",
        f"{n:,} chunks: memory, snapshots and restart (FAISS backend)",
        f"{n:,} chunks of 384-d clustered unit vectors with 200-character texts (windows of "
        "samples/corpus), 10 chunks a document, upserted over gRPC 1,000 a call into one "
        "retrieval service on the server cores (RAGMESH_SNAPSHOT_EVERY = half of them: a "
        "snapshot halfway, another after the last batch). Raw size: the vectors (1,536 "
        "bytes each) plus the texts (200). Memory: the service's resident set after the "
        "second snapshot less that of the empty service; the whole resident set and its "
        "peak against raw. Search: single queries, top 10, one after another "
        "from the client core, for 5 s before the snapshot and throughout it (writes wait "
        "for a snapshot; searches do not: it runs at idle priority, taking what the "
        "searches leave, and at normal priority after 30 s or once a write has waited "
        "2 s). Snapshot s: from the last write's answer to the new snapshot file, with "
        "those searches running. Restart: 10,000 more chunks written after the "
        "snapshot, SIGKILL, then a new process until SERVING (snapshot load and log replay). "
        "One run per index kind.",
        [
            "index",
            "load s",
            "bytes a chunk (RSS − empty service)",
            "RSS / raw",
            "peak RSS / raw",
            "snapshot s",
            "search p99 ms",
            "p99 during snapshot ms",
            "restart s",
        ],
    )
    chunks = Chunks()
    results: dict[str, dict[str, float]] = {}
    for kind in ("flat", "hnsw"):
        with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
            results[kind] = one_kind(kind, n, chunks, Path(tmp))
        r = results[kind]
        section.rows.append(
            [
                kind,
                f"{r['load_s']:.0f}",
                f"{(r['rss'] - r['rss_empty']) / n:.0f}",
                f"{r['rss'] / raw:.2f}",
                f"{r['peak_rss'] / raw:.2f}",
                f"{r['snapshot_s']:.1f}",
                f"{r['p99']:.2f}",
                f"{r['p99_snapshot']:.2f} ({r['searches_snapshot']:.0f} searches)",
                f"{r['restart_s']:.1f}",
            ]
        )
        section.targets += [
            Target(
                "million",
                f"{kind}: resident memory for the chunks / raw (vectors + texts)",
                Spread([(r["rss"] - r["rss_empty"]) / raw]),
                "<=",
                1.3,
                detail=f"{(r['rss'] - r['rss_empty']) / n:.0f} bytes a chunk against "
                f"{raw / n:.0f} raw; the empty service: {r['rss_empty'] / 2**20:.0f} MiB",
            ),
            Target(
                "million",
                f"{kind}: crash restart to SERVING",
                Spread([r["restart_s"]]),
                "<=",
                60.0,
                "s",
                detail=f"{TAIL:,} log records replayed",
            ),
            Target(
                "million",
                f"{kind}: Search p99 during a snapshot / without",
                Spread([r["p99_snapshot"] / r["p99"]]),
                "<=",
                2.0,
                detail=f"snapshot {r['snapshot_s']:.1f} s",
            ),
        ]
    section.series = dict(results)
    return section
