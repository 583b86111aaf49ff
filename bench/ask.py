"""Ask end to end (extractive engine): time to first token and total, on a miss and on a
cache hit; and the relay overhead of query over a test generator (bench.ticker) emitting
one token every 13 ms on 32 concurrent streams."""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import (
    ROOT,
    Section,
    Spread,
    Target,
    client_cpus,
    ingest_corpus,
    on_cpus,
    percentile,
    pinned,
    server_cpus,
    start_pinned,
    start_stack,
)
from ragmesh.kit.clients import QueryClient
from ragmesh.kit.domain import AskDone, AskInput, Delta
from ragmesh.v1 import (
    generation_service_pb2,
    generation_service_pb2_grpc,
)
from ragmesh_lab.cli.supervisor import Proc, Stack

QUESTIONS = (
    "How tall is the Keelhaven lighthouse?",
    "When was the lighthouse automated?",
    "How long is the Tinmoor railway?",
    "What did the Tinmoor railway carry?",
    "How many apple varieties does the Glass Valley orchard grow?",
    "Who owns the Glass Valley orchard?",
    "What is the lighthouse's light made of?",
    "Where does the railway end?",
)
STREAMS = 32
TOKENS = 40
INTERVAL_MS = 13.0


def questions(n: int, salt: str) -> list[str]:
    """``n`` distinct questions (each a cache miss the first time it is asked)."""
    return [f"{QUESTIONS[i % len(QUESTIONS)]} ({salt} {i})" for i in range(n)]


async def ask_once(client: QueryClient, question: str) -> tuple[float, float, bool]:
    """(ms to the first answer delta, ms to done, cache hit) as the client sees them."""
    start = time.perf_counter()
    first = 0.0
    hit = False
    async for event in client.ask(AskInput(question=question)):
        if isinstance(event, Delta) and not first:
            first = (time.perf_counter() - start) * 1000
        elif isinstance(event, AskDone):
            hit = event.cache_hit
    return first, (time.perf_counter() - start) * 1000, hit


async def miss_and_hit(address: str, n: int, salt: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        client = QueryClient(channel)
        batch = questions(n, salt)
        for label in ("miss", "hit"):
            for q in batch:
                ttft, total, hit = await ask_once(client, q)
                if hit != (label == "hit"):
                    raise RuntimeError(f"expected a cache {label} for {q!r}")
                out.setdefault(f"{label}_ttft", []).append(ttft)
                out.setdefault(f"{label}_total", []).append(total)
    return out


async def token_delays(stream_of_texts, streams: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Per-token delay (ms) from the ticker's send time to arrival here, over ``streams``."""
    delays: list[float] = []

    async def one(i: int) -> None:
        async for text in stream_of_texts(i):
            arrived = time.monotonic_ns()
            delays.append((arrived - int(text)) / 1e6)

    await asyncio.gather(*(one(i) for i in range(streams)))
    return delays


async def relay_round(query_addr: str, ticker_addr: str, salt: str) -> dict[str, list[float]]:
    async with (
        grpc.aio.insecure_channel(query_addr) as qc,
        grpc.aio.insecure_channel(ticker_addr) as tc,
    ):
        query = QueryClient(qc)
        ticker = generation_service_pb2_grpc.GenerationServiceStub(tc)

        async def via_query(i: int):  # type: ignore[no-untyped-def]
            async for event in query.ask(AskInput(question=questions(STREAMS, salt)[i])):
                if isinstance(event, Delta):
                    yield event.text

        async def direct(i: int):  # type: ignore[no-untyped-def]
            request = generation_service_pb2.GenerateRequest(question=f"q {salt} {i}")
            async for event in ticker.Generate(request, timeout=60):
                if event.WhichOneof("event") == "delta":
                    yield event.delta

        return {
            "direct": await token_delays(direct, STREAMS),
            "relay": await token_delays(via_query, STREAMS),
        }


def start_ticker(stack: Stack) -> Proc:
    argv = [sys.executable, "-m", "bench.ticker", "--tokens", str(TOKENS)]
    argv += ["--interval-ms", str(INTERVAL_MS)]
    proc = stack.spawn("ticker", pinned(argv, server_cpus()), {"PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 30
    while not (m := re.search(r"listening (\d+)", proc.output())):
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ticker did not start: {proc.output()[-500:]}")
        time.sleep(0.05)
    proc.grpc_port = int(m.group(1))
    return proc


def run(quick: bool, repeats: int) -> Section:
    n = 20 if quick else 60
    section = Section(
        "ask",
        "Ask end to end: miss vs cache hit, and the relay of a token stream",
        "The whole local stack (Redis, embedding, retrieval, extractive generation, query, "
        "ingest) on the server cores, samples/corpus ingested; one client on the client "
        f"core asks {n} distinct questions one after another (misses: the question's "
        "embedding and the answer are not cached), then the same ones again (answer-cache "
        "hits). Times are the client's: to the first answer delta, and to the done event. "
        f"Relay: a test generator (bench/ticker.py) streams {TOKENS} tokens, one every "
        f"{INTERVAL_MS:g} ms, each stamped with its send time; {STREAMS} concurrent Asks "
        "through a query service wired to it, and the same streams straight from it "
        "(direct); delay = arrival − send, per token.",
        ["measure", "p50 ms", "p99 ms"],
    )
    timings: dict[str, list[list[float]]] = {}
    relay: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ragmesh-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            query = start_stack(stack)
            ingest_corpus(query)
            time.sleep(0.5)
            ticker = start_ticker(stack)
            relay_query = start_pinned(
                stack,
                "query-relay",
                "query",
                {
                    "RAGMESH_GENERATION_ADDR": ticker.address,
                    "RAGMESH_ANSWER_CACHE_TTL_SECONDS": "0",
                    # the relay is measured here, not admission: every stream gets a slot
                    "RAGMESH_QUERY_MAX_ASKS": str(STREAMS),
                },
            )
            with on_cpus(client_cpus()):
                asyncio.run(miss_and_hit(query.address, 4, "warm-up"))
                asyncio.run(relay_round(relay_query.address, ticker.address, "warm-up"))
                for r in range(repeats):
                    for k, v in asyncio.run(miss_and_hit(query.address, n, f"run {r}")).items():
                        timings.setdefault(k, []).append(v)
                    for k, v in asyncio.run(
                        relay_round(relay_query.address, ticker.address, f"run {r}")
                    ).items():
                        relay.setdefault(k, []).append(v)
        finally:
            stack.down()
    _tabulate(section, timings, relay)
    return section


def _tabulate(
    section: Section, timings: dict[str, list[list[float]]], relay: dict[str, list[list[float]]]
) -> None:
    def pct(values: list[list[float]], p: float) -> Spread:
        return Spread([percentile(v, p) for v in values])

    labels = {
        "miss_ttft": "miss: time to first token",
        "miss_total": "miss: total",
        "hit_ttft": "hit: time to first token",
        "hit_total": "hit: total",
    }
    for key, label in labels.items():
        section.rows.append([label, pct(timings[key], 50).text(1), pct(timings[key], 99).text(1)])
    section.rows.append(
        [
            f"token delay, {STREAMS} streams straight from the generator",
            pct(relay["direct"], 50).text(2),
            pct(relay["direct"], 99).text(2),
        ]
    )
    section.rows.append(
        [
            f"token delay, {STREAMS} streams relayed by query",
            pct(relay["relay"], 50).text(2),
            pct(relay["relay"], 99).text(2),
        ]
    )
    for what in ("total", "ttft"):
        section.targets.append(
            Target(
                "ask",
                f"hit / miss, {'total' if what == 'total' else 'time to first token'} p50",
                Spread(
                    [
                        percentile(h, 50) / percentile(m, 50)
                        for h, m in zip(
                            timings[f"hit_{what}"], timings[f"miss_{what}"], strict=True
                        )
                    ]
                ),
                "<=",
                0.1,
            )
        )
    for p, limit in ((50, 5.0), (99, 15.0)):
        section.targets.append(
            Target(
                "ask",
                f"relay: token delay through query, p{p} (send → client, all of it)",
                pct(relay["relay"], p),
                "<=",
                limit,
                "ms",
                detail=f"straight from the generator: {pct(relay['direct'], p).text(2)} ms",
            )
        )
    section.series = {key: sorted(values[0]) for key, values in {**timings, **relay}.items()}
