"""Ask under concurrency, side by side: ragmesh's local stack against the plain design
(bench/peers/monolith.py: FastAPI + sentence-transformers + FAISS in one process, uvicorn),
at 1, 8, 32 and 128 concurrent streams. Closed loop; a refused call (RESOURCE_EXHAUSTED,
HTTP 429/503) counts as refused and its caller backs off as a gRPC retry policy would
(random up to 0.1 s, doubling per refusal in a row, at most 1.6 s)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.ask import QUESTIONS
from bench.common import (
    ROOT,
    Section,
    Spread,
    Target,
    client_cpus,
    ingest_corpus,
    on_cpus,
    pause,
    percentile,
    pinned,
    resume,
    server_cpus,
    start_stack,
)
from ragmesh.kit.clients import QueryClient
from ragmesh.kit.domain import AskDone, AskInput, Delta
from ragmesh.kit.errors import Overloaded
from ragmesh_lab.cli.supervisor import Proc, Stack

LEVELS = (1, 8, 32, 128)
#: a refused caller's retry backoff (gRPC retry policy: initialBackoff, multiplier, max)
BACKOFF_S, BACKOFF_MULTIPLIER, BACKOFF_MAX_S = 0.1, 2.0, 1.6
TOP_K = 5
SYSTEMS = {"ragmesh": "ragmesh Ask (gRPC, local stack)", "monolith": "FastAPI monolith (HTTP)"}


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    ttft_ms: float
    total_ms: float
    result: str  # ok | refused | error


One = Callable[[str], Awaitable[Call]]


def _question(caller: int, i: int, salt: str) -> str:
    """A question never asked before in this run (every Ask is a cache miss)."""
    return f"{QUESTIONS[(caller + i) % len(QUESTIONS)]} ({salt} {caller}.{i})"


async def closed_loop(one: One, callers: int, warm: float, seconds: float, salt: str) -> list[Call]:
    """``callers`` each asking the next question when the last answer ended; the calls that
    ended within the ``seconds`` after ``warm`` seconds of warm-up."""
    begin = time.perf_counter()
    window = (begin + warm, begin + warm + seconds)
    kept: list[Call] = []

    async def caller(c: int) -> None:
        i, refusals = 0, 0
        while time.perf_counter() < window[1]:
            call = await one(_question(c, i, salt))
            i += 1
            if window[0] <= call.ended <= window[1]:
                kept.append(call)
            refusals = refusals + 1 if call.result == "refused" else 0
            if refusals:  # a gRPC retry policy's backoff: exponential, full jitter
                cap = min(BACKOFF_MAX_S, BACKOFF_S * BACKOFF_MULTIPLIER ** (refusals - 1))
                await asyncio.sleep(random.uniform(0, cap))

    await asyncio.gather(*(caller(c) for c in range(callers)))
    return kept


def ragmesh_caller(client: QueryClient) -> One:
    async def one(question: str) -> Call:
        start = time.perf_counter()
        first, result = 0.0, "error"
        try:
            async for event in client.ask(AskInput(question=question, top_k=TOP_K)):
                if isinstance(event, Delta) and not first:
                    first = time.perf_counter()
                elif isinstance(event, AskDone):
                    result = "ok"
        except Overloaded:
            result = "refused"
        except Exception:
            result = "error"
        end = time.perf_counter()
        return Call(start, end, ((first or end) - start) * 1000, (end - start) * 1000, result)

    return one


def monolith_caller(client: object, url: str) -> One:
    import httpx

    assert isinstance(client, httpx.AsyncClient)

    async def one(question: str) -> Call:
        start = time.perf_counter()
        first, result = 0.0, "error"
        try:
            body = {"question": question, "top_k": TOP_K}
            async with client.stream("POST", url, json=body) as response:
                if response.status_code in (429, 503):
                    result = "refused"
                elif response.status_code == 200:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        if "delta" in event and not first:
                            first = time.perf_counter()
                        elif event.get("done"):
                            result = "ok"
        except Exception:
            result = "error"
        end = time.perf_counter()
        return Call(start, end, ((first or end) - start) * 1000, (end - start) * 1000, result)

    return one


async def measure_ragmesh(
    address: str, callers: int, warm: float, seconds: float, salt: str
) -> list[Call]:
    async with grpc.aio.insecure_channel(address) as channel:
        return await closed_loop(ragmesh_caller(QueryClient(channel)), callers, warm, seconds, salt)


async def measure_monolith(
    url: str, callers: int, warm: float, seconds: float, salt: str
) -> list[Call]:
    import httpx

    limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await closed_loop(monolith_caller(client, url), callers, warm, seconds, salt)


def start_monolith(stack: Stack) -> Proc:
    argv = [sys.executable, "-m", "uvicorn", "bench.peers.monolith:app"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--no-access-log"]
    env = {"PYTHONPATH": str(ROOT), "RAGMESH_BENCH_CORPUS": str(ROOT / "samples" / "corpus")}
    proc = stack.spawn("monolith", pinned(argv, server_cpus()), env)
    deadline = time.monotonic() + 300
    url = ""
    while not url:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", proc.output())
        if found:
            url = f"http://127.0.0.1:{found.group(1)}"
        elif proc.popen.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"monolith did not start: {proc.output()[-500:]}")
        time.sleep(0.1)
    proc.grpc_port = int(url.rsplit(":", 1)[1])
    return proc


@dataclass
class Level:
    """One system at one concurrency in one repeat."""

    asks_per_s: float
    ttft: list[float]
    total: list[float]
    refused: int
    errors: int


def summarize(calls: list[Call], seconds: float) -> Level:
    ok = [c for c in calls if c.result == "ok"]
    return Level(
        len(ok) / seconds,
        [c.ttft_ms for c in ok] or [0.0],
        [c.total_ms for c in ok] or [0.0],
        sum(c.result == "refused" for c in calls),
        sum(c.result == "error" for c in calls),
    )


def run(quick: bool, repeats: int) -> Section:
    warm, seconds = (1.0, 4.0) if quick else (2.0, 8.0)
    section = Section(
        "concurrency",
        "Ask under concurrency: ragmesh vs a FastAPI monolith",
        "samples/corpus, top_k 5, the extractive answer, every question distinct (a cache "
        "miss). ragmesh: the local stack (Redis, embedding, retrieval, extractive "
        "generation, query, ingest; default settings) on the server cores. Monolith "
        "(bench/peers/monolith.py): FastAPI + sentence-transformers + FAISS (flat) in one "
        "uvicorn process on the server cores, same model, chunks, top_k and sentence choice. "
        f"Callers on the client core in a closed loop for {seconds:g} s after {warm:g} s of "
        "warm-up; a refused call (RESOURCE_EXHAUSTED) counts as refused, not as an answer, "
        "and its caller backs off as a gRPC retry policy would (random up to 0.1 s, "
        "doubling per refusal in a row, at most 1.6 s). Whichever system is not measured "
        "is paused (SIGSTOP). "
        "Times are the client's: to the first answer word, and to the end of the stream.",
        [
            "system",
            "streams",
            "Asks/s",
            "first token p50 ms",
            "first token p99 ms",
            "total p50 ms",
            "total p99 ms",
            "refused",
            "errors",
        ],
    )
    results: dict[str, dict[int, list[Level]]] = {s: {n: [] for n in LEVELS} for s in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            query = start_stack(stack)
            ingest_corpus(query)
            monolith = start_monolith(stack)
            url = f"http://127.0.0.1:{monolith.grpc_port}/ask"
            ragmesh_procs = [p for name, p in stack.procs.items() if name != "monolith"]
            with on_cpus(client_cpus()):
                for r in range(repeats):
                    for n in LEVELS:
                        salt = f"run {r} at {n}"
                        pause(monolith)
                        calls = asyncio.run(measure_ragmesh(query.address, n, warm, seconds, salt))
                        resume(monolith)
                        results["ragmesh"][n].append(summarize(calls, seconds))
                        for p in ragmesh_procs:
                            pause(p)
                        try:
                            calls = asyncio.run(measure_monolith(url, n, warm, seconds, salt))
                        finally:
                            for p in ragmesh_procs:
                                resume(p)
                        results["monolith"][n].append(summarize(calls, seconds))
        finally:
            stack.down()
    _tabulate(section, results)
    return section


def _tabulate(section: Section, results: dict[str, dict[int, list[Level]]]) -> None:
    def spread(levels: list[Level], f: Callable[[Level], float]) -> Spread:
        return Spread([f(x) for x in levels])

    for system, label in SYSTEMS.items():
        for n in LEVELS:
            levels = results[system][n]
            section.rows.append(
                [
                    label,
                    str(n),
                    spread(levels, lambda x: x.asks_per_s).text(1),
                    spread(levels, lambda x: percentile(x.ttft, 50)).text(0),
                    spread(levels, lambda x: percentile(x.ttft, 99)).text(0),
                    spread(levels, lambda x: percentile(x.total, 50)).text(0),
                    spread(levels, lambda x: percentile(x.total, 99)).text(0),
                    spread(levels, lambda x: x.refused).text(0),
                    spread(levels, lambda x: x.errors).text(0),
                ]
            )
    ours, theirs = results["ragmesh"], results["monolith"]
    section.targets.append(
        Target(
            "concurrency",
            "32 streams: ragmesh Asks/s / monolith Asks/s",
            Spread(
                [a.asks_per_s / b.asks_per_s for a, b in zip(ours[32], theirs[32], strict=True)]
            ),
            ">=",
            1.5,
        )
    )
    section.targets.append(
        Target(
            "concurrency",
            "32 streams: ragmesh p99 first token / monolith p99 first token",
            Spread(
                [
                    percentile(a.ttft, 99) / percentile(b.ttft, 99)
                    for a, b in zip(ours[32], theirs[32], strict=True)
                ]
            ),
            "<=",
            1.0,
        )
    )
    section.targets.append(
        Target(
            "concurrency",
            "ragmesh p99 first token, 128 streams / 1 stream (no collapse)",
            Spread(
                [
                    percentile(a.ttft, 99) / percentile(b.ttft, 99)
                    for a, b in zip(ours[128], ours[1], strict=True)
                ]
            ),
            "<=",
            10.0,
            detail="monolith: "
            + Spread(
                [
                    percentile(a.ttft, 99) / percentile(b.ttft, 99)
                    for a, b in zip(theirs[128], theirs[1], strict=True)
                ]
            ).text(1)
            + "×",
        )
    )
    section.targets.append(
        Target(
            "concurrency",
            "ragmesh errors other than RESOURCE_EXHAUSTED, every level",
            Spread(
                [
                    float(sum(x.errors for n in LEVELS for x in [ours[n][r]]))
                    for r in range(len(ours[1]))
                ]
            ),
            "<=",
            0.0,
            unit="calls",
        )
    )
    section.series = {
        "levels": list(LEVELS),
        **{
            f"{s}_{what}": [Spread([f(x) for x in results[s][n]]).median for n in LEVELS]
            for s in SYSTEMS
            for what, f in (
                ("asks", lambda x: x.asks_per_s),
                ("ttft_p99", lambda x: percentile(x.ttft, 99)),
                ("ttft_p50", lambda x: percentile(x.ttft, 50)),
            )
        },
    }
