"""Durability: kill -9 a retrieval server process in the middle of a stream of upserts;
after a restart every acknowledged chunk must be searchable. Also: SIGTERM drains cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.v1 import (
    common_pb2,
)
from ragmesh.v1 import (
    retrieval_service_pb2 as pb,
)
from ragmesh.v1 import (
    retrieval_service_pb2_grpc as pb_grpc,
)

DIM = 24
LISTENING = re.compile(r"listening: grpc [\d.]+:(\d+)")


class Server:
    """A retrieval service in its own process, like a pod."""

    def __init__(self, index_dir: Path, log: Path) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAGMESH_")},
            "RAGMESH_HOST": "127.0.0.1",
            "RAGMESH_GRPC_PORT": "0",
            "RAGMESH_METRICS_PORT": "0",
            "RAGMESH_INDEX_DIR": str(index_dir),
            "RAGMESH_INDEX_DIM": str(DIM),
            "RAGMESH_SNAPSHOT_EVERY": "120",  # several snapshots happen during the stream
            "RAGMESH_DRAIN_SECONDS": "0.2",
        }
        self.log = log
        self.out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragmesh.retrieval"],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        self.port = 0

    async def ready(self) -> pb_grpc.RetrievalServiceStub:
        for _ in range(300):  # bounded: 30 s
            text = self.log.read_text()
            m = LISTENING.search(text)
            if m and "retrieval ready" in text:
                self.port = int(m.group(1))
                break
            assert self.proc.poll() is None, self.log.read_text()
            await asyncio.sleep(0.1)
        assert self.port, self.log.read_text()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return pb_grpc.RetrievalServiceStub(self.channel)

    async def stop(self, sig: int, close: bool = True) -> int:
        """Send ``sig`` and wait for the exit status; then release the channel and log file."""
        self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, 20)
        if close:
            await self.close()
        return code

    async def close(self) -> None:
        await self.channel.close()
        self.out.close()


def vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def batch(start: int, n: int) -> pb.UpsertRequest:
    return pb.UpsertRequest(
        tenant="default",
        chunks=[
            pb.Chunk(
                chunk_id=f"c{i}",
                document_id=f"d{i // 10}",
                text=f"chunk {i}",
                vector=vec(i).tobytes(),
            )
            for i in range(start, start + n)
        ],
    )


async def test_acknowledged_upserts_survive_kill_9(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = Server(tmp_path / "index", log)
    stub = await server.ready()
    acked: list[int] = []
    killed = asyncio.Event()

    async def writer(worker: int) -> None:
        # four concurrent writers, 7 chunks per upsert, each id written once
        for n in range(1000):
            start = (n * 4 + worker) * 7
            try:
                await stub.Upsert(batch(start, 7), timeout=10)
            except grpc.aio.AioRpcError:
                assert killed.is_set(), "an upsert failed before the kill"
                return
            acked.extend(range(start, start + 7))

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    while len(acked) < 600:  # kill well inside the stream, with upserts in flight
        await asyncio.sleep(0.005)
    killed.set()
    assert await server.stop(signal.SIGKILL, close=False) == -signal.SIGKILL
    await asyncio.gather(*writers)  # in-flight upserts fail (unacknowledged) on the dead server
    await server.close()

    log = tmp_path / "restarted.log"
    restarted = Server(tmp_path / "index", log)
    stub = await restarted.ready()
    info = await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
    assert info.count >= len(acked)
    for start in range(0, len(acked), 200):
        ids = acked[start : start + 200]
        q = np.stack([vec(i) for i in ids]).astype("<f4").tobytes()
        res = await stub.Search(
            pb.SearchRequest(
                tenant="default",
                queries=common_pb2.VectorBatch(count=len(ids), dimension=DIM, data=q),
                top_k=1,
            ),
            timeout=30,
        )
        missing = [
            i for i, r in zip(ids, res.results, strict=True) if r.passages[0].chunk_id != f"c{i}"
        ]
        assert not missing, f"acknowledged chunks lost after kill -9: {missing[:10]}"
    assert "snapshot at version" in (tmp_path / "server.log").read_text()  # crossed snapshots too
    assert "log records replayed" in log.read_text()

    assert await restarted.stop(signal.SIGTERM) == 0  # clean shutdown: drains and exits 0
    assert "retrieval stopped" in log.read_text()


@pytest.mark.parametrize("garbage", [b"\x40\x00\x00\x00\x01\x02\x03\x04partial"])
async def test_torn_log_tail_after_crash_is_truncated_and_logged(
    tmp_path: Path, garbage: bytes
) -> None:
    log = tmp_path / "server.log"
    server = Server(tmp_path / "index", log)
    stub = await server.ready()
    await stub.Upsert(batch(0, 5), timeout=10)
    await server.stop(signal.SIGKILL)
    with open(tmp_path / "index" / "wal.log", "ab") as f:
        f.write(garbage)  # what a crash in the middle of a write leaves
    log = tmp_path / "restarted.log"
    restarted = Server(tmp_path / "index", log)
    stub = await restarted.ready()
    assert (await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)).count == 5
    assert "torn tail" in log.read_text()
    await restarted.stop(signal.SIGKILL)
