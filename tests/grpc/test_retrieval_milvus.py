"""The milvus backend's own promises, on a real Milvus server: writes visible across
replicas, no expression injection, Milvus's limits and outages as clear statuses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from ragmesh.retrieval.__main__ import build
from ragmesh.retrieval.service import RetrievalService
from ragmesh.v1 import retrieval_service_pb2 as pb
from ragmesh.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import settings_for, start
from tests.grpc.test_retrieval import COLLECTION, DIM, chunk, queries
from tests.support import milvus


@contextlib.asynccontextmanager
async def replicas(
    uri: str, count: int, **env: str
) -> AsyncIterator[list[pb_grpc.RetrievalServiceStub]]:
    """``count`` retrieval replicas on one Milvus collection (the contract suite's: a
    collection takes seconds to create and load, emptying it a fraction of one)."""
    settings = settings_for(
        None,
        RAGMESH_INDEX_DIM=str(DIM),
        RAGMESH_INDEX_BACKEND="milvus",
        RAGMESH_MILVUS_URI=uri,
        RAGMESH_MILVUS_COLLECTION=COLLECTION,
        **env,
    )
    hosts = [
        await start(settings, build(RetrievalService(settings.retrieval))) for _ in range(count)
    ]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") for h in hosts]
    try:
        yield [pb_grpc.RetrievalServiceStub(c) for c in channels]
    finally:
        for c in channels:
            await c.close()
        for h in hosts:
            await h.drain_and_stop()
        await asyncio.to_thread(milvus.clear, uri, COLLECTION)


def ids(reply: pb.SearchResponse) -> list[str]:
    return [p.chunk_id for p in reply.results[0].passages]


async def test_strong_an_acknowledged_upsert_is_in_the_next_search_on_any_replica(
    milvus_uri: str,
) -> None:
    async with replicas(milvus_uri, 2) as (a, b):
        for i in range(5):
            up = await a.Upsert(pb.UpsertRequest(tenant="t", chunks=[chunk(i)]), timeout=10)
            found = await b.Search(
                pb.SearchRequest(tenant="t", queries=queries(i), top_k=1), timeout=10
            )
            assert ids(found) == [f"c{i}"] and up.upserted_count == 1
        search = pb.SearchRequest(  # a version no write was given (an hour ahead): refused
            tenant="t",
            queries=queries(1),
            top_k=1,
            min_index_version=up.index_version + (3_600_000 << 18),
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await b.Search(search, timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        gone = await b.Delete(pb.DeleteRequest(tenant="t", chunk_ids=["c4"]), timeout=10)
        found = await a.Search(
            pb.SearchRequest(tenant="t", queries=queries(4), top_k=5), timeout=10
        )
        assert gone.deleted_count == 1 and "c4" not in ids(found)


async def test_session_a_search_with_min_index_version_sees_that_write(milvus_uri: str) -> None:
    async with replicas(milvus_uri, 2, RAGMESH_MILVUS_CONSISTENCY="session") as (a, b):
        for i in range(5):
            up = await a.Upsert(pb.UpsertRequest(tenant="t", chunks=[chunk(i)]), timeout=10)
            search = pb.SearchRequest(
                tenant="t", queries=queries(i), top_k=1, min_index_version=up.index_version
            )
            found = await b.Search(search, timeout=10)
            assert ids(found) == [f"c{i}"] and found.index_version >= up.index_version
            mine = await a.Search(  # a replica's own writes, without a version
                pb.SearchRequest(tenant="t", queries=queries(i), top_k=1), timeout=10
            )
            assert ids(mine) == [f"c{i}"]
        # a version no write was given (an hour ahead) is refused, not waited for
        search.min_index_version = up.index_version + (3_600_000 << 18)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await b.Search(search, timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        assert (e.value.details() or "").startswith("min_index_version:")


INJECTIONS = [
    'en" or tenant != "',
    "en' or 1 == 1 or '",
    'x") or (pk != "',
    "back\\slash\\",
    "line\nbreak",
    "ünïcödé ✓",
]


async def test_filters_and_ids_are_never_expressions(milvus_uri: str) -> None:
    """Values that would change an expression's meaning if spliced into it match only
    themselves; ids of that shape delete only themselves."""
    async with replicas(milvus_uri, 1) as (stub,):
        chunks = [chunk(i, doc=value, lang=value) for i, value in enumerate(INJECTIONS)]
        await stub.Upsert(pb.UpsertRequest(tenant="t", chunks=chunks), timeout=10)
        await stub.Upsert(pb.UpsertRequest(tenant="u", chunks=[chunk(99, lang="en")]), timeout=10)
        for i, value in enumerate(INJECTIONS):
            found = await stub.Search(
                pb.SearchRequest(tenant="t", queries=queries(0), top_k=20, filter={"lang": value}),
                timeout=10,
            )
            assert ids(found) == [f"c{i}"]
            assert dict(found.results[0].passages[0].metadata) == {"lang": value}
        gone = await stub.Delete(
            pb.DeleteRequest(tenant="t", document_ids=[INJECTIONS[0]], chunk_ids=['" or pk != "']),
            timeout=10,
        )
        assert gone.deleted_count == 1
        left = await stub.Search(
            pb.SearchRequest(tenant="t", queries=queries(0), top_k=20), timeout=10
        )
        assert sorted(ids(left)) == sorted(f"c{i}" for i in range(1, len(INJECTIONS)))


async def test_text_over_milvus_limit_is_invalid_argument_and_writes_nothing(
    milvus_uri: str,
) -> None:
    async with replicas(milvus_uri, 1) as (stub,):
        wide = pb.Chunk(
            chunk_id="w", document_id="d", text="\U0001d11e" * 16384, vector=chunk(1).vector
        )
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Upsert(pb.UpsertRequest(tenant="t", chunks=[chunk(2), wide]), timeout=10)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (e.value.details() or "").startswith("chunks[1].text:")
        info = await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
        assert info.count == 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class Cable:
    """A TCP forwarder to Milvus that the test can cut (every connection) and mend."""

    def __init__(self, target: str) -> None:
        self.host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target_port = int(port)
        self.open: set[asyncio.StreamWriter] = set()
        self.cut = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self.open |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def sever(self) -> None:
        self.cut = True
        for w in self.open:
            w.close()
        self.open.clear()

    async def close(self) -> None:
        self.sever()
        if self.server is not None:
            self.server.close()


async def test_milvus_out_of_reach_is_unavailable_naming_it_then_serves_again(
    milvus_uri: str,
) -> None:
    cable = Cable(milvus_uri)
    through = await cable.start()
    try:
        async with replicas(through, 1) as (stub,):
            await stub.Upsert(pb.UpsertRequest(tenant="t", chunks=[chunk(1)]), timeout=10)
            cable.sever()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Search(
                    pb.SearchRequest(tenant="t", queries=queries(1), top_k=1), timeout=3
                )
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE
            assert f"milvus at {through}" in (e.value.details() or "")
            cable.cut = False
            found = None
            for _ in range(40):  # pymilvus reconnects on its own
                with contextlib.suppress(grpc.aio.AioRpcError):
                    found = await stub.Search(
                        pb.SearchRequest(tenant="t", queries=queries(1), top_k=1), timeout=3
                    )
                    break
                await asyncio.sleep(0.25)
            assert found is not None and ids(found) == ["c1"]
    finally:
        await cable.close()


async def test_the_collection_records_its_embedding_model_for_every_replica(
    milvus_uri: str,
) -> None:
    """The first write naming its model records it on the collection: every replica (one
    that opened before, one that opens after) refuses another model's writes and searches."""
    async with replicas(milvus_uri, 2) as (a, b):
        await a.Upsert(
            pb.UpsertRequest(tenant="t", chunks=[chunk(1)], embedding_model="minilm"), timeout=10
        )
        for stub in (a, b):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Upsert(
                    pb.UpsertRequest(tenant="t", chunks=[chunk(2)], embedding_model="e5-small"),
                    timeout=10,
                )
            assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "'minilm'" in (e.value.details() or "")
            search = pb.SearchRequest(
                tenant="t", queries=queries(1), top_k=2, embedding_model="e5-small"
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Search(search, timeout=10)
            assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            search.embedding_model = "minilm"
            assert ids(await stub.Search(search, timeout=10)) == ["c1"]
        async with replicas(milvus_uri, 1) as (later,):
            info = await later.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
            assert info.embedding_model == "minilm"
