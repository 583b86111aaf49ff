"""Reindex into a new generation with a real embedding model (MiniLM) while a writer and a
reader serve the old one; switch, rollback, confirm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.embedding.__main__ import build as embedding_build
from ragmesh.embedding.service import EmbeddingService
from ragmesh.retrieval import reindex
from ragmesh.retrieval.__main__ import build
from ragmesh.retrieval.service import RetrievalService
from ragmesh.v1 import common_pb2
from ragmesh.v1 import embedding_service_pb2 as epb
from ragmesh.v1 import embedding_service_pb2_grpc as epb_grpc
from ragmesh.v1 import retrieval_service_pb2 as pb
from ragmesh.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests.conftest import settings_for, start

DIM = 384
TEXTS = {
    "lighthouse": "The Keelhaven lighthouse flashes white every ten seconds.",
    "orchard": "The cooperative orchard grows forty-two varieties of apple.",
    "railway": "The narrow-gauge railway runs fourteen kilometres to the harbour.",
}
MINILM = "all-MiniLM-L6-v2"


def old_vector(i: int) -> bytes:  # vectors of a model no longer served
    return np.random.default_rng(i).standard_normal(DIM).astype("<f4").tobytes()


async def wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)


async def test_reindex_switch_rollback_confirm(tmp_path: Path) -> None:
    index = tmp_path / "index"
    settings = settings_for(None, RAGMESH_INDEX_DIR=str(index), RAGMESH_INDEX_REFRESH_MS="50")
    reader_settings = settings_for(
        None,
        RAGMESH_INDEX_DIR=str(index),
        RAGMESH_INDEX_ROLE="reader",
        RAGMESH_INDEX_REFRESH_MS="50",
    )
    embed_settings = settings_for()
    embedder = await start(
        embed_settings, embedding_build(EmbeddingService(embed_settings.embedding))
    )
    writer = await start(settings, build(RetrievalService(settings.retrieval)))
    reader = await start(reader_settings, build(RetrievalService(reader_settings.retrieval)))
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") for h in (embedder, writer, reader)
    ]
    embed = epb_grpc.EmbeddingServiceStub(channels[0])
    to_writer, to_reader = (pb_grpc.RetrievalServiceStub(c) for c in channels[1:])
    try:
        chunks = [
            pb.Chunk(chunk_id=f"{k}#0", document_id=k, text=t, vector=old_vector(i))
            for i, (k, t) in enumerate(TEXTS.items())
        ]
        await to_writer.Upsert(
            pb.UpsertRequest(tenant="t", chunks=chunks, embedding_model="old-model"), timeout=5
        )
        question = await embed.Embed(
            epb.EmbedRequest(texts=["How often does the light flash?"]), timeout=30
        )

        async def ask(stub: pb_grpc.RetrievalServiceStub, model: str) -> list[str]:
            reply = await stub.Search(
                pb.SearchRequest(
                    tenant="t",
                    queries=common_pb2.VectorBatch(
                        count=1, dimension=DIM, data=question.embeddings.data
                    ),
                    top_k=3,
                    embedding_model=model,
                ),
                timeout=5,
            )
            return [p.chunk_id for p in reply.results[0].passages]

        address = f"127.0.0.1:{embedder.port}"
        first = await asyncio.to_thread(reindex.build, index, address)
        # writes since the build: the switch refuses
        await to_writer.Upsert(
            pb.UpsertRequest(tenant="t", chunks=chunks[:1], embedding_model="old-model"), timeout=5
        )
        with pytest.raises(SystemExit, match="took writes since the build"):
            await asyncio.to_thread(reindex.switch, index, first)
        target = await asyncio.to_thread(reindex.build, index, address)
        before = await to_writer.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)
        await asyncio.to_thread(reindex.switch, index, target)
        assert index.is_symlink() and index.resolve() == target

        for stub in (to_writer, to_reader):  # both serve the new generation on their own

            async def new_model(stub: pb_grpc.RetrievalServiceStub = stub) -> bool:
                info = await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)
                return info.embedding_model == MINILM and info.count == 3

            await wait_for(new_model)
            assert (await ask(stub, MINILM))[0] == "lighthouse#0"
            info = await stub.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)
            assert info.index_version > before.index_version  # versions go on, never back
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ask(stub, "old-model")
            assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        up = await to_writer.Upsert(  # the writer writes the new generation
            pb.UpsertRequest(
                tenant="t",
                chunks=[
                    pb.Chunk(
                        chunk_id="x#0", document_id="x", text="x", vector=question.embeddings.data
                    )
                ],
                embedding_model=MINILM,
            ),
            timeout=5,
        )
        assert up.upserted_count == 1

        previous = await asyncio.to_thread(reindex.rollback, index)
        assert previous.name == "original"

        async def old_model() -> bool:
            info = await to_reader.GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)
            return info.embedding_model == "old-model"

        await wait_for(old_model)
        # the old generation was kept as it was; confirm deletes what is not served
        deleted = await asyncio.to_thread(reindex.confirm, index)
        assert sorted(deleted) == sorted([first.name, target.name])
        assert [g.name for g in reindex.generations(index).iterdir()] == ["original"]
    finally:
        for c in channels:
            await c.close()
        for h in (reader, writer, embedder):
            await h.drain_and_stop()
