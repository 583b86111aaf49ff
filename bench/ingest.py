"""Ingest rate: chunks per second from ``Ingest`` to searchable, with one and two ingest
workers, against the in-process ceiling (the same chunks encoded by sentence-transformers and
added to a FAISS index in one process)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import (
    Section,
    Spread,
    Target,
    client_cpus,
    on_cpus,
    pause,
    resume,
    run_json,
    server_cpus,
    start_pinned,
    start_stack,
)
from bench.load import documents
from ragmesh.kit.clients import QueryClient
from ragmesh.kit.domain import DocumentIn, JobState, JobStatus
from ragmesh.v1 import retrieval_service_pb2, retrieval_service_pb2_grpc
from ragmesh_lab.cli.supervisor import Proc, Stack

BATCH_DOCUMENTS = 10  # documents per Ingest call
POLL_S = 0.1  # job polling (each poll is a GetIngestJob per unfinished job)
DONE = (JobState.SUCCEEDED, JobState.FAILED)


async def ingest_all(address: str, docs: list[tuple[str, str, str]]) -> tuple[float, int]:
    """Queue ``docs`` (id, title, text) and wait until every job finished: (seconds, chunks)."""
    async with grpc.aio.insecure_channel(address) as channel:
        client = QueryClient(channel, timeout=60)
        started = time.perf_counter()
        jobs = []
        for i in range(0, len(docs), BATCH_DOCUMENTS):
            batch = docs[i : i + BATCH_DOCUMENTS]
            jobs.append(await client.ingest([DocumentIn(d, t, x, {}) for d, t, x in batch]))
        status: dict[str, JobStatus] = {}
        while len(status) < len(jobs):  # the unfinished ones, ten times a second
            await asyncio.sleep(POLL_S)
            for j in jobs:
                if j not in status and (s := await client.job(j)).state in DONE:
                    status[j] = s
        seconds = time.perf_counter() - started
    failed = sum(s.documents_failed for s in status.values())
    if failed:
        raise RuntimeError(f"{failed} documents failed to ingest")
    return seconds, sum(s.chunks_done for s in status.values())


async def indexed(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = retrieval_service_pb2_grpc.RetrievalServiceStub(channel)
        info = await stub.GetIndexInfo(retrieval_service_pb2.GetIndexInfoRequest(), timeout=10)
        return int(info.count)


def run(quick: bool, repeats: int) -> Section:
    n_docs = 40 if quick else 80
    section = Section(
        "ingest",
        "Ingest rate: Ingest to searchable, one and two workers, vs in process",
        f"{n_docs} documents of 40 sentences (about 6,000 characters, sentences from "
        "samples/corpus), chunked at ragmesh's defaults (500 characters, 100 overlap), each "
        "chunk embedded with its title and summary in front. ragmesh: the local stack on "
        f"the server cores; the client queues them {BATCH_DOCUMENTS} documents per Ingest "
        "call and polls the unfinished jobs every 0.1 s; the clock stops when every job "
        "finished (a finished job's chunks are searchable: the worker acknowledges only "
        "after Upsert). Two workers: a "
        "second ingest process on the same Redis Streams group. In process: the same chunks "
        "(same chunker, same texts), sentence-transformers encode(batch_size=32) and a FAISS "
        "flat index add, one process on the server cores, timed from the first chunk() to "
        "the last add(); the stack is paused (SIGSTOP) meanwhile.",
        ["system", "chunks", "seconds", "chunks/s"],
    )
    rates: dict[str, list[float]] = {"1 worker": [], "2 workers": [], "in process": []}
    seconds: dict[str, list[float]] = {k: [] for k in rates}
    chunks: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            query = start_stack(stack)
            second: Proc | None = None
            with on_cpus(client_cpus()):
                asyncio.run(ingest_all(query.address, documents(4, "warm-up")))
                for r in range(repeats):
                    for label in ("1 worker", "2 workers"):
                        if label == "2 workers" and second is None:
                            second = start_pinned(stack, "ingest-2", "ingest", {})
                        if label == "1 worker" and second is not None:
                            pause(second)
                        s, c = asyncio.run(
                            ingest_all(query.address, documents(n_docs, f"run {r} {label}"))
                        )
                        if label == "1 worker" and second is not None:
                            resume(second)
                        rates[label].append(c / s)
                        seconds[label].append(s)
                        chunks[label] = c
                    procs = list(stack.procs.values())
                    for p in procs:
                        pause(p)
                    try:
                        result = run_json(
                            [sys.executable, "-m", "bench.inprocess", "ingest"]
                            + ["--documents", str(n_docs), "--salt", f"run {r}"],
                            cpus=server_cpus(),
                        )
                    finally:
                        for p in procs:
                            resume(p)
                    assert isinstance(result, dict)
                    rates["in process"].append(result["chunks_per_s"])
                    seconds["in process"].append(result["seconds"])
                    chunks["in process"] = int(result["chunks"])
                expected = sum(chunks[k] for k in ("1 worker", "2 workers")) * repeats
                found = asyncio.run(indexed(stack.procs["retrieval"].address))
                if found < expected:
                    raise RuntimeError(f"{found} chunks searchable, {expected} ingested")
        finally:
            stack.down()
    for label in rates:
        section.rows.append(
            [
                label if label == "in process" else f"ragmesh, {label}",
                str(chunks[label]),
                Spread(seconds[label]).text(2),
                Spread(rates[label]).text(0),
            ]
        )
    for label in ("1 worker", "2 workers"):
        section.targets.append(
            Target(
                "ingest",
                f"{label}: ragmesh chunks/s / in-process chunks/s",
                Spread([a / b for a, b in zip(rates[label], rates["in process"], strict=True)]),
                ">=",
                0.85,
            )
        )
    section.series = {k: Spread(v).median for k, v in rates.items()}
    return section
