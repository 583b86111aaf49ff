"""Storage faults under a real retrieval service process.

A full disk (a tmpfs the test mounts, 2 MiB, and unmounts): writes are RESOURCE_EXHAUSTED
naming the disk and leave nothing behind, a failed snapshot never fails the write it
follows, writes resume when space returns, and a restart loads every acknowledged write.
A damaged log: the service refuses to start, and the recovery tool keeps every intact
frame. (Every kind of damage, frame by frame: tests/unit/test_wal.py.)"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.retrieval import wal
from ragmesh.v1 import common_pb2
from ragmesh.v1 import retrieval_service_pb2 as pb
from tests.e2e.test_durability import DIM, Server, batch, vec


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the disk has no space left."""
    with open(path, "wb", buffering=0) as f:
        block = b"\xaa" * 4096
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC


async def test_a_full_disk_is_survivable(tmp_path: Path, small_disk: Path) -> None:
    index = small_disk / "index"
    server = Server(index, tmp_path / "server.log")
    stub = await server.ready()
    await stub.Upsert(batch(0, 100), timeout=10)
    log_size = (index / "wal.log").stat().st_size

    filler = small_disk / "filler"
    fill(filler)
    with pytest.raises(grpc.aio.AioRpcError) as full:  # more than the last page's slack
        await stub.Upsert(batch(100, 60), timeout=10)
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "disk full" in (full.value.details() or "")
    assert (index / "wal.log").stat().st_size == log_size  # the partial frame rolled back
    info = await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
    assert info.count == 100

    # room for the log frame, not for a snapshot: the write past the snapshot interval
    # (120 chunks) is acknowledged, the snapshot is logged as failed and tried again later
    with open(filler, "r+b") as f:
        f.truncate(filler.stat().st_size - 4 * 4096)
    await stub.Upsert(batch(100, 30), timeout=10)
    for _ in range(200):  # the snapshot is written after the write is acknowledged
        if "snapshot failed" in server.log.read_text():
            break
        await asyncio.sleep(0.05)
    assert "snapshot failed" in server.log.read_text()

    filler.unlink()  # space returns: writes go on, the snapshot succeeds
    await stub.Upsert(batch(130, 10), timeout=10)
    assert (await server.stop(signal.SIGKILL)) == -signal.SIGKILL

    restarted = Server(index, tmp_path / "restarted.log")
    stub = await restarted.ready()
    info = await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
    assert info.count == 140
    data = np.stack([vec(i) for i in (5, 105, 135)]).astype("<f4").tobytes()
    found = await stub.Search(
        pb.SearchRequest(
            tenant="default",
            queries=common_pb2.VectorBatch(count=3, dimension=DIM, data=data),
            top_k=1,
        ),
        timeout=10,
    )
    assert [r.passages[0].chunk_id for r in found.results] == ["c5", "c105", "c135"]
    await restarted.stop(signal.SIGTERM)


async def test_a_damaged_log_stops_the_service_until_the_recovery_tool_ran(
    tmp_path: Path,
) -> None:
    index = tmp_path / "index"
    server = Server(index, tmp_path / "server.log")
    stub = await server.ready()
    for i in range(20):
        await stub.Upsert(batch(i, 1), timeout=10)
    await server.stop(signal.SIGKILL)
    log = index / "wal.log"
    data = bytearray(log.read_bytes())
    offset = wal._FILE.size
    for _ in range(5):  # to the sixth frame: set the high byte of its length
        offset += wal._FRAME.size + int.from_bytes(data[offset + 4 : offset + 8], "little")
    data[offset + 7] = 0x40
    log.write_bytes(bytes(data))

    refused = Server(index, tmp_path / "refused.log")
    assert await asyncio.to_thread(refused.proc.wait, 60) != 0
    refused.out.close()
    text = refused.log.read_text()
    assert "DataCorruption" in text and "ragmesh.retrieval.recover" in text
    assert log.read_bytes() == bytes(data)  # nothing truncated

    env = {**os.environ, "RAGMESH_INDEX_DIM": str(DIM), "RAGMESH_INDEX_DIR": str(index)}
    tool = subprocess.run(
        [sys.executable, "-m", "ragmesh.retrieval.recover"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "missing: versions 6-6" in tool.stdout and "19 chunks" in tool.stdout

    restarted = Server(index, tmp_path / "restarted.log")
    stub = await restarted.ready()
    assert (await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)).count == 19
    await restarted.stop(signal.SIGTERM)
