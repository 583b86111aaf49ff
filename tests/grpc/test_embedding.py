"""EmbeddingService over real gRPC with the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from ragmesh.embedding.__main__ import build
from ragmesh.embedding.service import EmbeddingService
from ragmesh.kit.server import ServiceHost
from ragmesh.v1 import embedding_service_pb2 as pb
from ragmesh.v1 import embedding_service_pb2_grpc as pb_grpc
from tests.conftest import sample, scrape, settings_for, start

Fixture = tuple[ServiceHost, pb_grpc.EmbeddingServiceStub, EmbeddingService]


@pytest.fixture(scope="module")
async def embedding() -> AsyncIterator[
    tuple[ServiceHost, pb_grpc.EmbeddingServiceStub, EmbeddingService]
]:
    settings = settings_for(
        RAGMESH_EMBED_MAX_TEXTS="8", RAGMESH_EMBED_MAX_CHARS="200", RAGMESH_EMBED_MAX_WAIT_MS="5"
    )
    engine = EmbeddingService(settings.embedding)
    host = await start(settings, build(engine))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    yield host, pb_grpc.EmbeddingServiceStub(channel), engine
    await channel.close()
    await host.drain_and_stop()


def vectors(resp: pb.EmbedResponse) -> np.ndarray:
    e = resp.embeddings
    return np.frombuffer(e.data, dtype="<f4").reshape(e.count, e.dimension)


async def test_minilm_related_sentences_are_closer(embedding: Fixture) -> None:
    _, stub, _ = embedding
    resp = await stub.Embed(
        pb.EmbedRequest(
            texts=[
                "How do I reset my password?",
                "Steps to recover a forgotten account password.",
                "The mitochondria is the powerhouse of the cell.",
            ],
            purpose=pb.EMBEDDING_PURPOSE_QUERY,
        ),
        timeout=30,
    )
    v = vectors(resp)
    assert v.shape == (3, 384) and resp.model == "all-MiniLM-L6-v2"
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


async def test_concurrent_calls_share_encodes(embedding: Fixture) -> None:
    host, stub, engine = embedding
    texts = [f"sentence number {i} about retrieval" for i in range(32)]
    single = {
        t: vectors(await stub.Embed(pb.EmbedRequest(texts=[t]), timeout=30))[0] for t in texts[:2]
    }
    batcher = engine.batcher  # its counters tell how many encodes ran
    assert batcher is not None
    before = batcher.stats.batches
    results = await asyncio.gather(
        *(stub.Embed(pb.EmbedRequest(texts=[t]), timeout=30) for t in texts)
    )
    encodes = batcher.stats.batches - before
    assert encodes < len(texts), f"{encodes} encodes for {len(texts)} concurrent calls"
    for t, r in zip(texts, results, strict=True):  # each caller got its own vector back
        v = vectors(r)
        assert v.shape == (1, 384)
        if t in single:
            assert np.allclose(v[0], single[t], atol=1e-4)


@pytest.mark.parametrize(
    ("texts", "purpose", "field"),
    [
        ([], 0, "texts"),
        (["x"] * 9, 0, "texts"),
        (["fine", "   "], 0, "texts[1]"),
        (["a" * 201], 0, "texts[0]"),
        (["fine"], 7, "purpose"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    embedding: Fixture, texts: list[str], purpose: int, field: str
) -> None:
    host, stub, engine = embedding
    labels = {"grpc_method": "Embed", "grpc_code": "INVALID_ARGUMENT"}
    before = sample(scrape(host.metrics_port), "grpc_server_handled_total", labels)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Embed(pb.EmbedRequest(texts=texts, purpose=purpose), timeout=30)  # type: ignore[arg-type]
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field + ":")
    after = sample(scrape(host.metrics_port), "grpc_server_handled_total", labels)
    assert after == before + 1
