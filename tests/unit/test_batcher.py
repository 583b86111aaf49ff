"""MicroBatcher: coalescing, routing results back, limits, failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from ragmesh.embedding.batcher import MicroBatcher
from ragmesh.kit.errors import Overloaded


class Recorder:
    """Encodes text i as the vector [len(text), key]; blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, texts: Sequence[str], key: int) -> np.ndarray:
        self.release.wait(5)
        self.calls.append(list(texts))
        return np.array([[len(t), key] for t in texts], dtype=np.float32)


async def test_concurrent_calls_are_coalesced_and_routed_back() -> None:
    enc = Recorder()
    enc.release.clear()  # hold the first encode so the others queue up behind it
    b: MicroBatcher[int] = MicroBatcher(enc, max_batch=64, max_wait_s=0.05, max_queued=1000)
    texts = [["a" * (i + 1)] * ((i % 3) + 1) for i in range(20)]
    tasks = [asyncio.create_task(b.embed(t, 7)) for t in texts]
    await asyncio.sleep(0.01)
    enc.release.set()
    results = await asyncio.gather(*tasks)
    for t, r in zip(texts, results, strict=True):
        assert r.shape == (len(t), 2)
        assert (r[:, 0] == len(t[0])).all() and (r[:, 1] == 7).all()
    assert len(enc.calls) < len(texts)  # fewer encodes than calls
    assert sum(len(c) for c in enc.calls) == sum(len(t) for t in texts)
    assert b.stats.largest > 1
    await b.close()


async def test_batches_respect_max_batch_and_keys() -> None:
    enc = Recorder()
    enc.release.clear()
    b: MicroBatcher[int] = MicroBatcher(enc, max_batch=4, max_wait_s=0.05, max_queued=1000)
    tasks = [asyncio.create_task(b.embed(["x"], i % 2)) for i in range(12)]
    await asyncio.sleep(0.01)
    enc.release.set()
    results = await asyncio.gather(*tasks)
    assert [int(r[0, 1]) for r in results] == [i % 2 for i in range(12)]
    assert max(len(c) for c in enc.calls) <= 4
    await b.close()


async def test_queue_limit_raises_overloaded() -> None:
    enc = Recorder()
    enc.release.clear()
    b: MicroBatcher[int] = MicroBatcher(enc, max_batch=2, max_wait_s=0.0, max_queued=3)
    first = asyncio.create_task(b.embed(["a", "b"], 0))
    await asyncio.sleep(0.01)  # the worker holds the first batch inside encode
    second = asyncio.create_task(b.embed(["c", "d", "e"], 0))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await b.embed(["f"], 0)
    enc.release.set()
    await asyncio.gather(first, second)
    await b.close()


async def test_encode_failure_reaches_every_caller_and_worker_survives() -> None:
    fail = {"on": True}

    def encode(texts: Sequence[str], key: int) -> np.ndarray:
        if fail["on"]:
            raise RuntimeError("boom")
        return np.zeros((len(texts), 2), dtype=np.float32)

    b: MicroBatcher[int] = MicroBatcher(encode, max_batch=8, max_wait_s=0.0, max_queued=100)
    with pytest.raises(RuntimeError, match="boom"):
        await b.embed(["a"], 0)
    fail["on"] = False
    assert (await b.embed(["a", "b"], 0)).shape == (2, 2)
    await b.close()


async def test_a_lone_caller_is_not_held_for_company_but_a_crowd_is_gathered_again() -> None:
    enc = Recorder()
    # max_wait is far longer than the test: only the linger rule lets the calls through
    b: MicroBatcher[int] = MicroBatcher(enc, max_batch=2, max_wait_s=60, max_queued=1000)
    await asyncio.wait_for(b.embed(["alone"], 0), 5)  # the first call does not linger
    await asyncio.wait_for(b.embed(["alone again"], 0), 5)  # nor after a lone caller
    await asyncio.wait_for(asyncio.gather(b.embed(["x"], 0), b.embed(["y"], 0)), 5)
    assert enc.calls[-1] == ["x", "y"]
    # after a batch of several callers the worker waits for the next one to fill
    first = asyncio.create_task(b.embed(["p"], 0))
    await asyncio.sleep(0.2)
    assert not first.done()
    await asyncio.wait_for(asyncio.gather(first, b.embed(["q"], 0)), 5)
    assert enc.calls[-1] == ["p", "q"]
    await b.close()
