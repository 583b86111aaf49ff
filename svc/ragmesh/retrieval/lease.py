"""The writer lease of a shared FAISS index directory, and the fence that enforces it. No grpc.

Every retrieval-writer replica is a candidate. The holder of ``writer.lease`` (holder, token,
renewal time; replaced by atomic rename) writes the index and renews the lease every third
of RAGMESH_INDEX_LEASE_SECONDS; the others follow the log as readers and answer writes
UNAVAILABLE (the mesh retries them on another replica). When the lease has not been renewed
for RAGMESH_INDEX_LEASE_SECONDS, one candidate takes over with the next token:

1. it claims the token by creating ``claim.<token>`` exclusively: one candidate per token;
2. it fences the log: the log gets a new inode (renamed away, copied, renamed back), so a
   previous holder that is still running appends to a file nobody reads, and its own check
   after every fsynced append (is ``wal.log`` still my file?) refuses to acknowledge that
   write (UNAVAILABLE) and stops it writing for good;
3. it opens the index as the writer (snapshot + log replay) and writes the lease.

So two writers never both acknowledge: every acknowledged write was fsynced into the log
before the fence, and the new writer replays the log after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ragmesh.retrieval.store import LOG, ChunkStore
from ragmesh.retrieval.wal import fsync_dir

log = logging.getLogger(__name__)

LEASE = "writer.lease"


@dataclass(frozen=True)
class Lease:
    holder: str
    token: int
    renewed: float  # unix time of the last renewal

    def expired(self, ttl: float, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.renewed > ttl


def me() -> str:
    """This process, as a lease names its holder (the pod name in a cluster)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def read(directory: Path) -> Lease | None:
    try:
        data = json.loads((directory / LEASE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Lease(str(data["holder"]), int(data["token"]), float(data["renewed"]))


def write(directory: Path, lease: Lease) -> None:
    tmp = directory / f"{LEASE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(lease.__dict__))
    os.replace(tmp, directory / LEASE)


def claim(directory: Path, token: int) -> bool:
    """Be the one candidate that takes ``token``."""
    try:
        fd = os.open(directory / f"claim.{token}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, me().encode())
    os.close(fd)
    for old in directory.glob("claim.*"):  # earlier tokens' claims are history
        if old.name != f"claim.{token}" and int(old.suffix[1:]) < token:
            old.unlink(missing_ok=True)
    return True


def fence(log: Path) -> None:
    """Give ``log`` a new inode holding what it holds now."""
    fenced = log.with_name(log.name + ".fenced")
    try:
        os.rename(log, fenced)
    except FileNotFoundError:
        return
    fresh = log.with_name(log.name + ".new")
    with open(fenced, "rb") as src, open(fresh, "wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(fresh, log)
    fenced.unlink()
    fsync_dir(log.parent)


class Candidate:
    """One writer candidate: takes the lease when it is free or expired, renews it while it
    holds it, and calls ``lost`` when another took it over."""

    def __init__(
        self,
        store: ChunkStore,
        ttl: float,
        run: Callable[[Callable[[], None]], Awaitable[None]],
        won: Callable[[], None],
        lost: Callable[[str], None],
    ) -> None:
        self.store, self.ttl = store, ttl
        self._run, self._won, self._lost = run, won, lost  # run: on the index thread
        self.token = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.tick()  # a free (or expired) lease is taken at once
        self._task = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.tick()
            except Exception:  # a failed renewal is tried again; the lease outlasts a few
                log.exception("writer lease")

    async def tick(self) -> None:
        """The holder renews the lease; a candidate takes it over once it expired."""
        held = await asyncio.to_thread(read, self.store.dir)
        if self.token:
            if held is None or held.token != self.token:
                self.token = 0
                self._lost(f"another writer holds the lease ({held})")
                return
            await asyncio.to_thread(write, self.store.dir, Lease(me(), self.token, time.time()))
        elif held is None or held.expired(self.ttl):
            token = (held.token if held else 0) + 1
            if await asyncio.to_thread(claim, self.store.dir, token):
                await self._run(lambda: self._take_over(token))

    def _take_over(self, token: int) -> None:
        started = time.monotonic()
        fence(self.store.dir / LOG)
        self.store.reopen(writable=True)
        write(self.store.dir, Lease(me(), token, time.time()))
        self.token = token
        self._won()
        log.warning(
            "took the writer lease (token %d) in %.2f s: index version %d",
            token,
            time.monotonic() - started,
            self.store.version,
        )
