"""Admission control and single flight at the front door. No grpc here.

An Ask is admitted before any work is spent on it: at most RAGMESH_QUERY_MAX_ASKS are
computed at once per replica and at most RAGMESH_QUERY_MAX_QUEUED wait for a slot; one that
finds the queue full, or gets no slot within RAGMESH_QUERY_ADMISSION_WAIT_MS (or its
deadline, whichever is sooner), is refused with RESOURCE_EXHAUSTED, having cost nothing
downstream. The queue bound keeps the time to first token of admitted Asks near its
unloaded value however many callers come (no collapse); the wait bound caps it.

Identical Asks in flight at the same time (same tenant, question, top_k,
filter and parameters) are computed once: the first is the leader and takes the slot; the
others wait for its events and replay them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Generic, TypeVar

from prometheus_client import Counter

from ragmesh.kit import callcontext
from ragmesh.kit.errors import Overloaded

E = TypeVar("E")
MARGIN_S = 0.1  # a refusal's time to reach the caller before its deadline
BUSY = "the service is busy: too many questions at once; retry shortly"

ADMISSIONS = Counter(
    "ragmesh_query_admissions_total",
    "Asks by admission: admitted (computed), shared (an identical Ask in flight answered it), "
    "refused (the queue was full, or no slot came within the admission wait).",
    ["result"],
)
for _result in ("admitted", "shared", "refused"):
    ADMISSIONS.labels(_result)


class Admission:
    """A bounded number of Asks computed at once, with a bounded wait for a slot."""

    def __init__(self, slots: int, wait_s: float, queued: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self._wait_s = wait_s
        self._max_queued = queued
        self._queued = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        wait = self._wait_s
        caller = callcontext.current()
        left = caller.remaining() if caller is not None else None
        if left is not None:
            wait = min(wait, max(0.0, left - MARGIN_S))
        if self._slots.locked():  # no free slot: wait, within bounds
            if self._queued >= self._max_queued:
                ADMISSIONS.labels("refused").inc()
                raise Overloaded(BUSY)
            self._queued += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), wait)
            except TimeoutError:
                ADMISSIONS.labels("refused").inc()
                raise Overloaded(BUSY) from None
            finally:
                self._queued -= 1
        else:
            await self._slots.acquire()  # free: taken at once
        ADMISSIONS.labels("admitted").inc()
        try:
            yield
        finally:
            self._slots.release()


class Flight(Generic[E]):
    """One computation in flight: its events so far, and whether it ended."""

    def __init__(self) -> None:
        self.events: list[E] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class SingleFlight(Generic[E]):
    """Identical concurrent requests share one computation's events."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight[E]] = {}

    def join(self, key: str) -> Flight[E] | None:
        """The flight computing ``key``, when one is in the air."""
        return self._flights.get(key)

    @contextlib.contextmanager
    def lead(self, key: str) -> Iterator[Flight[E]]:
        """Become the flight for ``key``. An error ends it for the followers too; a leader
        whose caller went away ends it unfinished (the followers compute their own)."""
        flight: Flight[E] = Flight()
        self._flights[key] = flight
        try:
            yield flight
        except Exception as e:
            if not flight.done.done():
                flight.done.set_exception(e)
                flight.done.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._flights[key]
            if not flight.done.done():
                flight.done.cancel()

    @staticmethod
    async def follow(flight: Flight[E]) -> list[E] | None:
        """The leader's events once it finished; None when it did not finish (its caller
        went away), so the follower computes the answer itself."""
        await asyncio.wait({flight.done})
        if flight.done.cancelled():
            return None
        flight.done.result()  # the leader's error is the follower's
        return flight.events
