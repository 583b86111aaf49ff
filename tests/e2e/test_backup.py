"""Backup and restore of the FAISS index: taken while the writer serves, restored into an
empty directory, the same index comes back."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.retrieval import backup
from ragmesh.retrieval.__main__ import build
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.service import RetrievalService
from ragmesh.retrieval.store import ChunkStore
from ragmesh.v1 import retrieval_service_pb2 as pb
from ragmesh.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import settings_for, start
from tests.grpc.test_retrieval import DIM, chunk, queries


async def _serve(index: Path, **env: str):  # type: ignore[no-untyped-def]
    settings = settings_for(None, RAGMESH_INDEX_DIR=str(index), RAGMESH_INDEX_DIM=str(DIM), **env)
    host = await start(settings, build(RetrievalService(settings.retrieval)))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    return host, channel, pb_grpc.RetrievalServiceStub(channel)


async def _results(stub: pb_grpc.RetrievalServiceStub) -> list[list[tuple[str, float]]]:
    reply = await stub.Search(
        pb.SearchRequest(tenant="t", queries=queries(*range(0, 60, 7)), top_k=5), timeout=5
    )
    return [[(p.chunk_id, round(p.score, 5)) for p in r.passages] for r in reply.results]


async def test_backup_wipe_restore_returns_the_same_search_results(tmp_path: Path) -> None:
    index, saved = tmp_path / "index", tmp_path / "backups" / "one"
    host, channel, stub = await _serve(index, RAGMESH_SNAPSHOT_EVERY="25")
    try:
        for start_at in range(0, 60, 10):
            await stub.Upsert(
                pb.UpsertRequest(
                    tenant="t",
                    chunks=[chunk(i) for i in range(start_at, start_at + 10)],
                    embedding_model="minilm",
                ),
                timeout=5,
            )
        await stub.Delete(pb.DeleteRequest(tenant="t", chunk_ids=["c7", "c14"]), timeout=5)
        before, info = await _results(stub), await stub.GetIndexInfo(pb.GetIndexInfoRequest())
        manifest = await asyncio.to_thread(backup.create, index, saved)  # while serving
    finally:
        await channel.close()
        await host.drain_and_stop()
    assert manifest.version == info.index_version
    shutil.rmtree(index)
    with pytest.raises(backup.BackupError):  # not into a directory holding an index
        host, channel, stub = await _serve(index)
        await channel.close()
        await host.drain_and_stop()
        backup.restore(saved, index)
    shutil.rmtree(index)
    assert backup.restore(saved, index).version == info.index_version
    host, channel, stub = await _serve(index)
    try:
        again = await stub.GetIndexInfo(pb.GetIndexInfoRequest())
        assert (again.count, again.index_version, again.embedding_model) == (
            info.count,
            info.index_version,
            "minilm",
        )
        assert await _results(stub) == before
    finally:
        await channel.close()
        await host.drain_and_stop()


async def test_a_backup_taken_under_writes_and_snapshots_is_one_version_of_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every upsert adds ten new chunks, so version v holds exactly c0..c(10v-1); a snapshot
    every fourth upsert replaces the snapshot and empties the log under the copy."""
    index = tmp_path / "index"
    read = backup._read_snapshot

    def slowly(directory: Path) -> tuple[int, bytes]:  # as a large snapshot reads
        found = read(directory)
        time.sleep(0.005)
        return found

    monkeypatch.setattr(backup, "_read_snapshot", slowly)
    host, channel, stub = await _serve(index, RAGMESH_SNAPSHOT_EVERY="40")
    stop = asyncio.Event()

    async def write() -> None:
        n = 0
        while not stop.is_set():
            await stub.Upsert(
                pb.UpsertRequest(tenant="t", chunks=[chunk(i) for i in range(n, n + 10)]),
                timeout=5,
            )
            n += 10

    writer = asyncio.create_task(write())
    try:
        manifests = []
        for k in range(30):
            await asyncio.sleep(0.01)
            manifests.append(
                await asyncio.to_thread(backup.create, index, tmp_path / "backups" / str(k))
            )
    finally:
        stop.set()
        await writer
        await channel.close()
        await host.drain_and_stop()
    assert len({m.snapshot_version for m in manifests}) > 1  # snapshots happened meanwhile
    for k, m in enumerate(manifests):
        restored = tmp_path / "restored" / str(k)
        backup.restore(tmp_path / "backups" / str(k), restored)
        store = ChunkStore(restored, IndexParams("flat", DIM), 10_000)
        store.open()
        try:
            assert store.version == m.version and store.count == 10 * m.version
            hits = store.search("t", np.stack([np.ones(DIM, np.float32)]), store.count, {})
            assert {h.chunk_id for h in hits[0]} == {f"c{i}" for i in range(10 * m.version)}
        finally:
            store.close()


def test_a_damaged_backup_is_refused(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "index", IndexParams("flat", DIM), 10_000)
    store.open()
    store.close()
    saved = tmp_path / "b"
    backup.create(tmp_path / "index", saved)
    assert backup.main(["verify", str(saved)]) == 0
    data = bytearray((saved / "wal.log").read_bytes())
    data[-1] ^= 0xFF
    (saved / "wal.log").write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match="does not match its checksum"):
        backup.restore(saved, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere" / "wal.log").exists()


def test_scheduled_backups_are_named_by_time_and_the_oldest_pruned(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "index", IndexParams("flat", DIM), 10_000)
    store.open()
    store.close()
    argv = ["create", "--index-dir", str(tmp_path / "index"), "--into", str(tmp_path / "b")]
    for _ in range(3):
        assert backup.main([*argv, "--keep", "2"]) == 0
        time.sleep(1.1)  # one second apart: the names are UTC seconds
    kept = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(kept) == 2 and all(len(name) == 16 and name.endswith("Z") for name in kept)
