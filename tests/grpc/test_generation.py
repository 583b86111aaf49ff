"""GenerationService over real gRPC: the extractive engine on real MiniLM, the transformers
engine on a tiny locally built model (streaming, cancel → abort), status codes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ragmesh.generation.__main__ import build
from ragmesh.generation.factory import create_engine
from ragmesh.generation.service import GenerationService
from ragmesh.kit import codec
from ragmesh.kit.domain import Purpose
from ragmesh.kit.server import ServiceHost
from ragmesh.v1 import common_pb2, generation_service_pb2, generation_service_pb2_grpc
from tests.conftest import settings_for, start
from tests.support.generation import generate
from tests.support.tinylm import build_tiny_lm

PASSAGES = [
    common_pb2.Passage(
        chunk_id="harbor#0",
        document_id="harbor",
        text="The harbor opens at dawn. Fishing boats leave before sunrise every day.",
    ),
    common_pb2.Passage(
        chunk_id="keeper#0",
        document_id="keeper",
        text="The lighthouse keeper records the wind speed at six every evening. "
        "He has kept the log since 1987.",
    ),
]


async def serve(env: dict[str, str]) -> tuple[ServiceHost, GenerationService]:
    settings = settings_for(**env)
    svc = GenerationService(
        settings.generation, create_engine(settings.generation, settings.embedding)
    )
    return await start(settings, build(svc)), svc


@pytest.fixture(scope="module")
async def extractive() -> AsyncIterator[tuple[ServiceHost, GenerationService]]:
    host, svc = await serve({})
    yield host, svc
    await host.drain_and_stop()


async def ask(
    port: int,
    question: str,
    passages: list[common_pb2.Passage] = PASSAGES,
    **params: object,
) -> tuple[list[str], generation_service_pb2.GenerateDone]:
    return await generate(port, question, passages, **params)


async def test_extractive_answer_streams_the_relevant_sentence_with_its_marker(
    extractive: tuple[ServiceHost, GenerationService],
) -> None:
    host, _ = extractive
    deltas, done = await ask(host.port, "When does the keeper record the wind speed?")
    answer = "".join(deltas)
    assert answer.startswith("The lighthouse keeper records the wind speed at six every evening")
    assert "[2]" in answer
    # a sentence at a time, each ending in its marker; usage counts the words
    assert all(re.search(r"\[\d+\]$", d) for d in deltas)
    assert sum(len(d.split()) for d in deltas) == done.usage.completion_tokens > 5
    assert done.finish_reason == common_pb2.FINISH_REASON_STOP
    assert done.model == "extractive/all-MiniLM-L6-v2"
    assert done.usage.prompt_tokens > 20


async def test_extractive_respects_max_tokens_and_the_filter(
    extractive: tuple[ServiceHost, GenerationService],
) -> None:
    host, _ = extractive
    deltas, done = await ask(host.port, "When does the keeper record the wind?", max_tokens=4)
    assert (len("".join(deltas).split()), done.usage.completion_tokens, done.finish_reason) == (
        4,
        4,
        common_pb2.FINISH_REASON_LENGTH,
    )
    filtered, _ = await serve({"RAGMESH_GEN_BLOCKLIST": "sunrise"})
    try:
        deltas, done = await ask(filtered.port, "When do the fishing boats leave?")
    finally:
        await filtered.drain_and_stop()
    assert done.finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER
    assert "".join(deltas) == "Fishing boats leave before "


async def test_a_blank_passage_is_skipped_and_the_others_keep_their_numbers(
    extractive: tuple[ServiceHost, GenerationService],
) -> None:
    host, _ = extractive
    blank = common_pb2.Passage(chunk_id="blank#0", document_id="blank", text=" \t\n ")
    deltas, done = await ask(
        host.port, "When does the keeper record the wind speed?", [blank, *PASSAGES]
    )
    answer = "".join(deltas)
    assert answer.startswith("The lighthouse keeper records the wind speed") and "[3]" in answer
    assert done.finish_reason == common_pb2.FINISH_REASON_STOP


@pytest.mark.parametrize(
    ("question", "params", "field"),
    [
        ("", {}, "question"),
        ("why?", {"temperature": 9.0}, "params.temperature"),
        ("why?", {"max_tokens": 99999}, "params.max_tokens"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    extractive: tuple[ServiceHost, GenerationService],
    question: str,
    params: dict[str, object],
    field: str,
) -> None:
    host, _ = extractive
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await ask(host.port, question, **params)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (e.value.details() or "").startswith(field + ":")


async def test_the_question_embedding_is_checked_and_used(
    extractive: tuple[ServiceHost, GenerationService],
) -> None:
    host, svc = extractive
    question = "When does the keeper record the wind speed?"
    vector = svc.engine._model.encode([question], Purpose.QUERY)  # type: ignore[attr-defined]
    good = codec.matrix_to_proto(vector)
    bad = [
        common_pb2.VectorBatch(count=2, dimension=384, data=good.data * 2),
        common_pb2.VectorBatch(count=1, dimension=384, data=good.data[:-4]),
        codec.matrix_to_proto(np.full((1, 384), np.nan, dtype=np.float32)),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)

        async def answer(batch: common_pb2.VectorBatch) -> str:
            request = generation_service_pb2.GenerateRequest(
                question=question,
                passages=PASSAGES,
                question_embedding=batch,
                question_embedding_model="all-MiniLM-L6-v2",
            )
            return "".join([r.delta async for r in stub.Generate(request, timeout=30)])

        for batch in bad:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await answer(batch)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (e.value.details() or "").startswith("question_embedding:")
        assert await answer(good) == "".join((await ask(host.port, question))[0])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tinylm"), min_new_tokens=4000)


async def test_transformers_engine_streams_exactly_max_tokens(tiny_lm: Path) -> None:
    host, svc = await serve(
        {"RAGMESH_GEN_ENGINE": "transformers", "RAGMESH_GEN_MODEL": str(tiny_lm)}
    )
    try:
        deltas, done = await ask(host.port, "What does the keeper log?", max_tokens=40)
        assert done.usage.completion_tokens == 40
        assert done.finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert done.model == f"transformers/{tiny_lm.name}"
        assert done.usage.prompt_tokens > 20
        assert 0 < len(deltas) <= 40
    finally:
        await host.drain_and_stop()


async def test_client_cancel_aborts_the_transformers_engine(tiny_lm: Path) -> None:
    host, svc = await serve(
        {
            "RAGMESH_GEN_ENGINE": "transformers",
            "RAGMESH_GEN_MODEL": str(tiny_lm),
            "RAGMESH_GEN_MAX_TOKENS": "2000",
            "RAGMESH_GEN_CONTEXT_TOKENS": "4096",
        }
    )
    engine = svc.engine
    at_abort: list[int] = []
    real_abort = engine.abort

    async def abort(request_id: str) -> None:
        at_abort.append(engine.produced)  # type: ignore[attr-defined]
        await real_abort(request_id)

    engine.abort = abort  # type: ignore[method-assign]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as ch:
            stub = generation_service_pb2_grpc.GenerationServiceStub(ch)
            call = stub.Generate(
                generation_service_pb2.GenerateRequest(
                    question="What does the keeper log?",
                    passages=PASSAGES,
                    params=common_pb2.GenerationParams(max_tokens=2000),
                ),
                timeout=60,
            )
            received = 0
            async for r in call:
                received += 1 if r.HasField("delta") else 0
                if received == 3:
                    call.cancel()
                    break
        for _ in range(500):  # wait (bounded) for the server to finish the stream
            if svc.active == 0 and not engine._runs:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        assert svc.active == 0 and len(at_abort) == 1
        # The generation thread checks the abort flag before every next token: at most the
        # token already being computed lands after abort(), and nothing close to 2000.
        assert engine.produced <= at_abort[0] + 1  # type: ignore[attr-defined]
        assert engine.produced < 2000  # type: ignore[attr-defined]
    finally:
        await host.drain_and_stop()


async def test_a_caller_leaving_the_query_side_client_aborts_generation(tiny_lm: Path) -> None:
    """What the query service does when its own client cancels Ask: it closes the
    GenerationClient stream, which cancels the Generate call, which aborts the engine."""
    from ragmesh.kit.channels import open_channel
    from ragmesh.kit.clients import GenerationClient
    from ragmesh.kit.domain import Params
    from ragmesh.kit.peers import Hit

    host, svc = await serve(
        {
            "RAGMESH_GEN_ENGINE": "transformers",
            "RAGMESH_GEN_MODEL": str(tiny_lm),
            "RAGMESH_GEN_MAX_TOKENS": "2000",
            "RAGMESH_GEN_CONTEXT_TOKENS": "4096",
        }
    )
    aborted: list[str] = []
    real_abort = svc.engine.abort

    async def abort(request_id: str) -> None:
        aborted.append(request_id)
        await real_abort(request_id)

    svc.engine.abort = abort  # type: ignore[method-assign]
    channel = open_channel(f"127.0.0.1:{host.port}")
    try:
        client = GenerationClient(channel, stream_timeout=60)
        stream = client.generate(
            "What does the keeper log?",
            [Hit("k#0", "k", "The keeper logs the weather.", 1.0)],
            Params(max_tokens=2000),
        )
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        for _ in range(500):  # bounded wait for the server side to wind down
            if svc.active == 0:
                break
            await asyncio.sleep(0.01)
        assert svc.active == 0 and len(aborted) == 1
        assert svc.engine.produced < 2000  # type: ignore[attr-defined]
    finally:
        await channel.close(grace=None)
        await host.drain_and_stop()
