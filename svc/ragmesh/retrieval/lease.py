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

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ragmesh.retrieval.wal import fsync_dir

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
