"""RetrievalService over real gRPC: writes, search, filters, versions, and bad input.

The tests taking the ``stub`` fixture are the API's contract: each runs against the embedded
FAISS store and against a real Milvus server (started once per session by the lab).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.retrieval import service as retrieval_service
from ragmesh.retrieval.__main__ import build
from ragmesh.retrieval.service import RetrievalService
from ragmesh.retrieval.store import ChunkIn
from ragmesh.v1 import (
    common_pb2,
)
from ragmesh.v1 import (
    retrieval_service_pb2 as pb,
)
from ragmesh.v1 import (
    retrieval_service_pb2_grpc as pb_grpc,
)
from tests.conftest import settings_for, start
from tests.support import milvus, rawh2

DIM = 32


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def chunk(i: int, doc: str = "doc", **meta: str) -> pb.Chunk:
    return pb.Chunk(
        chunk_id=f"c{i}", document_id=doc, text=f"text {i}", metadata=meta, vector=vec(i).tobytes()
    )


def queries(*seeds: int) -> common_pb2.VectorBatch:
    data = np.stack([vec(s) for s in seeds]).astype("<f4").tobytes()
    return common_pb2.VectorBatch(count=len(seeds), dimension=DIM, data=data)


COLLECTION = "contract"


@pytest.fixture(params=["faiss", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stub(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[pb_grpc.RetrievalServiceStub]:
    env = {"RAGMESH_INDEX_DIM": str(DIM), "RAGMESH_SEARCH_MAX_TOP_K": "20"}
    uri = ""
    if backend == "milvus":
        uri = request.getfixturevalue("milvus_uri")
        env |= {
            "RAGMESH_INDEX_BACKEND": "milvus",
            "RAGMESH_MILVUS_URI": uri,
            "RAGMESH_MILVUS_COLLECTION": COLLECTION,
        }
    settings = settings_for(tmp_path, **env)
    host = await start(settings, build(RetrievalService(settings.retrieval)))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        yield pb_grpc.RetrievalServiceStub(channel)
    finally:
        await channel.close()
        await host.drain_and_stop()
        if uri:
            await asyncio.to_thread(milvus.clear, uri, COLLECTION)


async def info(stub: pb_grpc.RetrievalServiceStub) -> pb.GetIndexInfoResponse:
    return await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)


async def test_upsert_search_delete_round_trip(
    stub: pb_grpc.RetrievalServiceStub, backend: str
) -> None:
    v0 = (await info(stub)).index_version
    up = await stub.Upsert(
        pb.UpsertRequest(
            tenant="default",
            chunks=[chunk(i, doc=f"d{i % 2}", lang=("en" if i < 5 else "fr")) for i in range(10)],
        ),
        timeout=5,
    )
    assert up.upserted_count == 10 and up.index_version > v0
    i = await info(stub)
    assert (i.count, i.dimension, i.kind, i.device, i.index_version) == (
        10,
        DIM,
        pb.INDEX_KIND_FLAT,
        "cpu" if backend == "faiss" else "milvus/FLAT",
        up.index_version,
    )

    res = await stub.Search(
        pb.SearchRequest(tenant="default", queries=queries(3, 7), top_k=3), timeout=5
    )
    assert len(res.results) == 2 and res.index_version == up.index_version
    best = res.results[0].passages[0]
    assert (best.chunk_id, best.document_id, best.text, dict(best.metadata)) == (
        "c3",
        "d1",
        "text 3",
        {"lang": "en"},
    )
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert res.results[1].passages[0].chunk_id == "c7"
    scores = [p.score for p in res.results[0].passages]
    assert scores == sorted(scores, reverse=True)

    filtered = await stub.Search(
        pb.SearchRequest(tenant="default", queries=queries(3), top_k=10, filter={"lang": "fr"}),
        timeout=5,
    )
    assert {p.chunk_id for p in filtered.results[0].passages} == {f"c{i}" for i in range(5, 10)}

    again = await stub.Upsert(
        pb.UpsertRequest(tenant="default", chunks=[chunk(3, doc="d1", lang="de")]), timeout=5
    )
    assert (await info(stub)).count == 10 and again.index_version > up.index_version

    gone = await stub.Delete(pb.DeleteRequest(tenant="default", document_ids=["d0"]), timeout=5)
    assert gone.deleted_count == 5 and gone.index_version > again.index_version
    gone2 = await stub.Delete(
        pb.DeleteRequest(tenant="default", chunk_ids=["c3", "nope"]), timeout=5
    )
    assert gone2.deleted_count == 1 and gone2.index_version > gone.index_version
    left = await stub.Search(
        pb.SearchRequest(tenant="default", queries=queries(3), top_k=20), timeout=5
    )
    assert {p.chunk_id for p in left.results[0].passages} == {"c1", "c5", "c7", "c9"}


async def test_each_tenant_searches_and_deletes_only_its_own_chunks(
    stub: pb_grpc.RetrievalServiceStub,
) -> None:
    await stub.Upsert(pb.UpsertRequest(tenant="acme", chunks=[chunk(1), chunk(2)]), timeout=5)
    await stub.Upsert(pb.UpsertRequest(tenant="globex", chunks=[chunk(1)]), timeout=5)
    acme = await stub.Search(
        pb.SearchRequest(tenant="acme", queries=queries(1), top_k=5), timeout=5
    )
    globex = await stub.Search(
        pb.SearchRequest(tenant="globex", queries=queries(1), top_k=5), timeout=5
    )
    assert [p.chunk_id for p in acme.results[0].passages][:1] == ["c1"]
    assert len(acme.results[0].passages) == 2 and len(globex.results[0].passages) == 1
    gone = await stub.Delete(pb.DeleteRequest(tenant="globex", document_ids=["doc"]), timeout=5)
    assert gone.deleted_count == 1
    acme = await stub.Search(
        pb.SearchRequest(tenant="acme", queries=queries(1), top_k=5), timeout=5
    )
    assert len(acme.results[0].passages) == 2  # globex deleted its "doc", not acme's


def bad_vector() -> bytes:
    v = vec(1)
    v[2] = np.nan
    return v.tobytes()


def inf_vector() -> bytes:
    v = vec(1)
    v[0] = -np.inf
    return v.tobytes()


BAD_UPSERTS = [
    (pb.UpsertRequest(tenant="default"), "chunks"),
    (pb.UpsertRequest(chunks=[chunk(1)]), "tenant"),  # no tenant: never "everyone's"
    (pb.UpsertRequest(tenant="a b", chunks=[chunk(1)]), "tenant"),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[
                chunk(1),
                pb.Chunk(chunk_id="x", document_id="d", text="t", vector=vec(1).tobytes()[:-4]),
            ],
        ),
        "chunks[1].vector",
    ),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[pb.Chunk(chunk_id="x", document_id="d", text="t", vector=bad_vector())],
        ),
        "chunks[0].vector",
    ),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[pb.Chunk(chunk_id="x", document_id="d", text="t", vector=inf_vector())],
        ),
        "chunks[0].vector",
    ),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[pb.Chunk(chunk_id="", document_id="d", text="t", vector=vec(1).tobytes())],
        ),
        "chunks[0].chunk_id",
    ),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[pb.Chunk(chunk_id="x", document_id="", text="t", vector=vec(1).tobytes())],
        ),
        "chunks[0].document_id",
    ),
    (pb.UpsertRequest(tenant="default", chunks=[chunk(1), chunk(1)]), "chunks[1].chunk_id"),
    (
        pb.UpsertRequest(
            tenant="default", chunks=[pb.Chunk(chunk_id="x", document_id="d", text=" \t\n ")]
        ),
        "chunks[0].text",
    ),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[
                pb.Chunk(
                    chunk_id="x",
                    document_id="d",
                    text="t",
                    vector=np.full(DIM, 1e20, np.float32).tobytes(),
                )
            ],
        ),
        "chunks[0].vector",
    ),
    (
        pb.UpsertRequest(
            tenant="default",
            chunks=[
                pb.Chunk(
                    chunk_id="x",
                    document_id="d",
                    text="t",
                    metadata={f"k{i}": "v" for i in range(33)},
                )
            ],
        ),
        "chunks[0].metadata",
    ),
    (
        pb.UpsertRequest(tenant="default", chunks=[chunk(1)], embedding_model="m\x00"),
        "embedding_model",
    ),
]


async def test_error_messages_echo_only_a_short_prefix_of_the_input(
    stub: pb_grpc.RetrievalServiceStub,
) -> None:
    long_id = "x" * 500
    twice = pb.UpsertRequest(tenant="default", chunks=[chunk(1), chunk(2)])
    for c in twice.chunks:
        c.chunk_id = long_id
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Upsert(twice, timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("chunks[1].chunk_id: duplicate id 'xxx")
    assert len(e.value.details() or "") < 120
    bad_key = pb.UpsertRequest(tenant="default", chunks=[chunk(1)])
    bad_key.chunks[0].metadata["k" * 10000] = "v"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Upsert(bad_key, timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(e.value.details() or "") < 200


async def test_deleting_unknown_ids_writes_nothing_and_large_deletes_are_refused(
    stub: pb_grpc.RetrievalServiceStub, tmp_path: Path, backend: str
) -> None:
    await stub.Upsert(pb.UpsertRequest(tenant="default", chunks=[chunk(1)]), timeout=5)
    before = await info(stub)
    wal = tmp_path / "index" / "wal.log"
    log_size = wal.stat().st_size if backend == "faiss" else 0
    reply = await stub.Delete(
        pb.DeleteRequest(tenant="default", chunk_ids=[f"nope{i}" for i in range(1000)]), timeout=5
    )
    assert reply.deleted_count == 0 and reply.index_version == before.index_version
    if backend == "faiss":
        assert wal.stat().st_size == log_size
    else:  # another tenant's chunk of that id is not this tenant's to delete
        reply = await stub.Delete(pb.DeleteRequest(tenant="other", chunk_ids=["c1"]), timeout=5)
        assert reply.deleted_count == 0 and (await info(stub)).count == 1
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Delete(
            pb.DeleteRequest(tenant="default", chunk_ids=[f"c{i}" for i in range(100_000)]),
            timeout=5,
        )
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("chunk_ids:")
    assert (await info(stub)).index_version == before.index_version


@pytest.mark.parametrize(("request_", "field"), BAD_UPSERTS)
async def test_bad_upsert_is_invalid_argument_and_writes_nothing(
    stub: pb_grpc.RetrievalServiceStub, request_: pb.UpsertRequest, field: str
) -> None:
    await stub.Upsert(pb.UpsertRequest(tenant="default", chunks=[chunk(100)]), timeout=5)
    before = await info(stub)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Upsert(request_, timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field + ":")
    after = await info(stub)
    assert (after.count, after.index_version) == (before.count, before.index_version)


BAD_SEARCHES = [
    (
        pb.SearchRequest(tenant="default", queries=common_pb2.VectorBatch(dimension=DIM), top_k=1),
        "queries",
    ),
    (
        pb.SearchRequest(
            tenant="default",
            queries=common_pb2.VectorBatch(count=1, dimension=DIM - 1, data=vec(1).tobytes()[:-4]),
            top_k=1,
        ),
        "queries.dimension",
    ),
    (
        pb.SearchRequest(
            tenant="default",
            queries=common_pb2.VectorBatch(count=2, dimension=DIM, data=vec(1).tobytes()),
            top_k=1,
        ),
        "queries.data",
    ),
    (
        pb.SearchRequest(
            tenant="default",
            queries=common_pb2.VectorBatch(count=1, dimension=DIM, data=bad_vector()),
            top_k=1,
        ),
        "queries.data[0]",
    ),
    (pb.SearchRequest(queries=queries(1), top_k=1), "tenant"),  # never "all tenants"
    (pb.SearchRequest(tenant="a/b", queries=queries(1), top_k=1), "tenant"),
    (pb.SearchRequest(tenant="default", queries=queries(1), top_k=0), "top_k"),
    (pb.SearchRequest(tenant="default", queries=queries(1), top_k=21), "top_k"),
    (
        pb.SearchRequest(tenant="default", queries=queries(1), top_k=1, embedding_model="a b"),
        "embedding_model",
    ),
]


@pytest.mark.parametrize(("request_", "field"), BAD_SEARCHES)
async def test_bad_search_is_invalid_argument(
    stub: pb_grpc.RetrievalServiceStub, request_: pb.SearchRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Search(request_, timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field + ":")


async def test_empty_delete_is_invalid_argument_and_writes_nothing(
    stub: pb_grpc.RetrievalServiceStub,
) -> None:
    before = await info(stub)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Delete(pb.DeleteRequest(tenant="default"), timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Delete(pb.DeleteRequest(document_ids=["d0"]), timeout=5)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith("tenant:")
    assert (await info(stub)).index_version == before.index_version


async def test_quick_searches_run_on_the_loop_slow_ones_and_writes_on_the_index_thread(
    tmp_path: Path,
) -> None:
    import threading

    settings = settings_for(tmp_path, RAGMESH_INDEX_DIM=str(DIM))
    engine = RetrievalService(settings.retrieval)
    await engine.open()
    try:
        seen: list[str] = []
        search = engine.store.search

        def spy(*args: object, **kwargs: object) -> object:
            seen.append(threading.current_thread().name)
            return search(*args, **kwargs)  # type: ignore[arg-type]

        engine.store.search = spy  # type: ignore[method-assign]
        data = np.stack([vec(1)]).astype("<f4").tobytes()
        await engine.upsert(
            "default", [ChunkIn("c1", "d", "text", {}, vec(1).astype("<f4").tobytes())]
        )
        hits, _ = await engine.search("default", 1, DIM, data, 1, {})
        assert seen[-1] == threading.main_thread().name  # a tiny index: inline
        assert hits[0][0].chunk_id == "c1"
        engine._per_query_s = 1.0  # as if the last searches took a second each
        hits, _ = await engine.search("default", 1, DIM, data, 1, {})
        assert seen[-1].startswith("index")
        assert hits[0][0].chunk_id == "c1"
        # a write in progress holds the lock: a quick search waits for it on the index thread
        engine._per_query_s = 0.0
        with engine._lock:
            pending = asyncio.ensure_future(engine.search("default", 1, DIM, data, 1, {}))
            await asyncio.sleep(0.1)
            assert not pending.done()
        hits, _ = await asyncio.wait_for(pending, 5)
        assert seen[-1].startswith("index")
    finally:
        await engine.close()


def _held_snapshot(
    engine: RetrievalService,
) -> tuple[threading.Event, threading.Event, list[int]]:
    """Make the next snapshot step until released: (started, release, the scheduling policy
    of the thread that ran each step)."""
    started, release, policies = threading.Event(), threading.Event(), []
    steps = engine.store.snapshot_steps

    def held() -> Iterator[None]:
        started.set()
        while not release.is_set():
            policies.append(os.sched_getscheduler(0))  # 0: the calling thread
            time.sleep(0.005)
            yield
        yield from steps()

    engine.store.snapshot_steps = held  # type: ignore[method-assign]
    return started, release, policies


def _put(i: int) -> ChunkIn:
    return ChunkIn(f"c{i}", "d", f"text {i}", {}, vec(i).astype("<f4").tobytes())


async def test_searches_go_on_while_a_snapshot_is_written_and_writes_wait(
    tmp_path: Path,
) -> None:
    """A snapshot reads the index while writes wait: searches are not blocked by it (at a
    million chunks writing one takes seconds), and the write after it sees it finished."""
    settings = settings_for(tmp_path, RAGMESH_INDEX_DIM=str(DIM), RAGMESH_SNAPSHOT_EVERY="2")
    engine = RetrievalService(settings.retrieval)
    await engine.open()
    writing, release, _ = _held_snapshot(engine)
    data = np.stack([vec(1)]).astype("<f4").tobytes()
    try:
        await engine.upsert("default", [_put(1), _put(2)])  # the second chunk: a snapshot due
        assert await asyncio.to_thread(writing.wait, 5)
        engine._per_query_s = 1.0  # a slow search: it would run on the index thread
        hits, _ = await asyncio.wait_for(engine.search("default", 1, DIM, data, 1, {}), 2)
        assert hits[0][0].chunk_id == "c1"
        write = asyncio.ensure_future(engine.upsert("default", [_put(3)]))
        await asyncio.sleep(0.1)
        assert not write.done()  # writes wait for the snapshot
        release.set()
        await asyncio.wait_for(write, 5)
        assert engine.store._since_snapshot == 1  # the snapshot took the first two
    finally:
        release.set()
        await engine.close()


async def test_a_snapshot_runs_at_idle_priority_until_a_write_has_waited_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches preempt a snapshot (it runs SCHED_IDLE); a write that has waited
    SNAPSHOT_HURRY_S for it has the rest written at normal priority, so a busy core delays
    writes by that much, not by however long the snapshot would starve."""
    monkeypatch.setattr(retrieval_service, "SNAPSHOT_HURRY_S", 0.2)
    settings = settings_for(tmp_path, RAGMESH_INDEX_DIM=str(DIM), RAGMESH_SNAPSHOT_EVERY="2")
    engine = RetrievalService(settings.retrieval)
    await engine.open()
    started, release, policies = _held_snapshot(engine)
    try:
        await engine.upsert("default", [_put(1), _put(2)])
        assert await asyncio.to_thread(started.wait, 5)
        await asyncio.sleep(0.3)  # no write waits: it stays idle however long it takes
        assert policies and set(policies) == {os.SCHED_IDLE}
        write = asyncio.ensure_future(engine.upsert("default", [_put(3)]))
        for _ in range(100):
            if policies[-1] == os.SCHED_OTHER:
                break
            await asyncio.sleep(0.01)
        assert policies[-1] == os.SCHED_OTHER, "the waiting write did not hurry the snapshot"
        assert not write.done()
        release.set()
        await asyncio.wait_for(write, 5)
        assert (tmp_path / "index" / "snapshot.npz").exists()
        assert engine.store._since_snapshot == 1
    finally:
        release.set()
        await engine.close()


@pytest.mark.parametrize("method", ["Upsert", "Search", "Delete", "GetIndexInfo"])
async def test_an_undecodable_request_is_invalid_argument(tmp_path: Path, method: str) -> None:
    settings = settings_for(tmp_path, RAGMESH_INDEX_DIM=str(DIM))
    host = await start(settings, build(RetrievalService(settings.retrieval)))
    try:
        reply = await asyncio.to_thread(
            rawh2.call,
            host.port,
            f"/ragmesh.v1.RetrievalService/{method}",
            rawh2.frame(b"\xff\xff\xff"),
        )
    finally:
        await host.drain_and_stop()
    assert reply.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.message.startswith(f"request: cannot be decoded as ragmesh.v1.{method}Request")


async def test_a_reader_behind_the_writer_catches_up_to_min_index_version(tmp_path: Path) -> None:
    """Read your writes across replicas: a reader that would apply the writer's log only in
    a minute serves a Search with min_index_version = the Upsert's version at once (it reads
    the log now); a version nobody wrote is UNAVAILABLE after RAGMESH_SEARCH_CATCH_UP_SECONDS
    (the mesh retries another replica), naming both versions. Without it, the reader answers
    from what it has."""
    common = {"RAGMESH_INDEX_DIM": str(DIM), "RAGMESH_SEARCH_CATCH_UP_SECONDS": "0.3"}
    writer_settings = settings_for(tmp_path, **common)
    writer = await start(writer_settings, build(RetrievalService(writer_settings.retrieval)))
    reader_settings = settings_for(
        tmp_path, RAGMESH_INDEX_ROLE="reader", RAGMESH_INDEX_REFRESH_MS="60000", **common
    )
    reader = await start(reader_settings, build(RetrievalService(reader_settings.retrieval)))
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") for h in (writer, reader)]
    try:
        to_writer, to_reader = (pb_grpc.RetrievalServiceStub(c) for c in channels)
        up = await to_writer.Upsert(pb.UpsertRequest(tenant="t", chunks=[chunk(1)]), timeout=5)
        search = pb.SearchRequest(tenant="t", queries=queries(1), top_k=1)
        stale = await to_reader.Search(search, timeout=5)
        assert stale.index_version < up.index_version and not stale.results[0].passages
        search.min_index_version = up.index_version
        fresh = await to_reader.Search(search, timeout=5)
        assert fresh.index_version >= up.index_version
        assert [p.chunk_id for p in fresh.results[0].passages] == ["c1"]
        search.min_index_version = up.index_version + 10
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await to_reader.Search(search, timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        details = e.value.details() or ""
        assert details.startswith("min_index_version:")
        assert f"{fresh.index_version}" in details and f"{up.index_version + 10}" in details
        with pytest.raises(grpc.aio.AioRpcError) as e:  # the writer has no later version either
            await to_writer.Search(search, timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        for c in channels:
            await c.close()
        await reader.drain_and_stop()
        await writer.drain_and_stop()


async def test_the_index_records_its_embedding_model_and_refuses_another(tmp_path: Path) -> None:
    """The first write that names its embedding model is recorded with the index's
    dimension; writes and searches of another model are FAILED_PRECONDITION naming both (and
    write nothing), after a restart and on a reader too."""
    settings = settings_for(tmp_path, RAGMESH_INDEX_DIM=str(DIM))
    reader_settings = settings_for(
        tmp_path, RAGMESH_INDEX_DIM=str(DIM), RAGMESH_INDEX_ROLE="reader"
    )
    for restart in (False, True):
        writer = await start(settings, build(RetrievalService(settings.retrieval)))
        reader = await start(reader_settings, build(RetrievalService(reader_settings.retrieval)))
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") for h in (writer, reader)]
        try:
            to_writer, to_reader = (pb_grpc.RetrievalServiceStub(c) for c in channels)
            if not restart:
                assert (await info(to_writer)).embedding_model == ""
                await to_writer.Upsert(
                    pb.UpsertRequest(tenant="t", chunks=[chunk(1)], embedding_model="minilm"),
                    timeout=5,
                )
            before = await info(to_writer)
            assert before.embedding_model == "minilm"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await to_writer.Upsert(
                    pb.UpsertRequest(tenant="t", chunks=[chunk(2)], embedding_model="e5-small"),
                    timeout=5,
                )
            assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            details = e.value.details() or ""
            assert details.startswith("embedding_model:")
            assert (
                "'minilm'" in details and "'e5-small'" in details and f"dimension {DIM}" in details
            )
            after = await info(to_writer)
            assert (after.count, after.index_version) == (before.count, before.index_version)
            for stub in (to_writer, to_reader):
                search = pb.SearchRequest(
                    tenant="t", queries=queries(1), top_k=1, embedding_model="e5-small"
                )
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Search(search, timeout=5)
                assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                search.embedding_model = "minilm"
                search.min_index_version = before.index_version
                found = await stub.Search(search, timeout=5)
                assert [p.chunk_id for p in found.results[0].passages] == ["c1"]
        finally:
            for c in channels:
                await c.close()
            await reader.drain_and_stop()
            await writer.drain_and_stop()
