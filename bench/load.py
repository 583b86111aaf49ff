"""Closed-loop load: ``concurrency`` callers, each issuing its next call when the last
returns, for a fixed time. Used against every server so they see the same load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, percentile
from ragmesh.kit.text import sentences
from ragmesh_lab.cli.documents import find_files, read_document


@dataclass
class Run:
    """Calls completed in ``seconds`` and the latency of each, in ms."""

    calls: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


async def closed_loop(
    call: Callable[[int], Awaitable[object]], concurrency: int, seconds: float, warmup: float
) -> Run:
    """Run ``call(i)`` from ``concurrency`` tasks; count only calls that start after
    ``warmup`` and finish before the end."""
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds
    latencies: list[float] = []
    counter = iter(range(1 << 62))

    async def caller() -> None:
        while True:
            t = time.perf_counter()
            if t >= end:
                return
            await call(next(counter))
            done = time.perf_counter()
            if t >= measure_from and done <= end:
                latencies.append((done - t) * 1000)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Run(len(latencies), seconds, latencies)


def sentence_pool(size: int) -> list[str]:
    """``size`` distinct single sentences (about 25 tokens each) from samples/corpus."""
    found: list[str] = []
    for path in find_files([ROOT / "samples" / "corpus"]):
        doc = read_document(path, Path(ROOT))
        found += [s for s in sentences(doc.text, limit=len(doc.text) + 1) if len(s.split()) >= 6]
    return [f"Note {i}: {found[i % len(found)]}" for i in range(size)]


SENTENCES_PER_DOCUMENT = 40


def documents(n: int, salt: str) -> list[tuple[str, str, str]]:
    """``n`` documents (id, title, text) of 40 sentences from samples/corpus in paragraphs of
    four, distinct per ``salt``."""
    pool = sentence_pool(n * SENTENCES_PER_DOCUMENT)
    out = []
    for d in range(n):
        own = pool[d * SENTENCES_PER_DOCUMENT : (d + 1) * SENTENCES_PER_DOCUMENT]
        paragraphs = [" ".join(own[i : i + 4]) for i in range(0, len(own), 4)]
        title = f"Notes {d} ({salt})"
        out.append((f"notes-{salt}-{d}".replace(" ", "-"), title, "\n\n".join(paragraphs)))
    return out


def chunked(items: Sequence[str], n: int) -> list[list[str]]:
    return [list(items[i : i + n]) for i in range(0, len(items), n)]
