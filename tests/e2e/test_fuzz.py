"""Fuzzing every API method of the real services (the stack of ``ragmesh up``: real MiniLM,
FAISS, Redis, the extractive engine, the ingest worker) with generated hostile requests
(:mod:`tests.support.fuzz`) and hostile header bytes: no INTERNAL, no UNKNOWN, no process
down, every service SERVING afterwards and a normal question still answered.

Bounded in time: each method gets ``count`` requests or ``seconds``, whichever ends first,
with 8 in flight."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import Message

from ragmesh.v1 import common_pb2
from ragmesh.v1 import embedding_service_pb2 as e
from ragmesh.v1 import generation_service_pb2 as g
from ragmesh.v1 import query_service_pb2 as q
from ragmesh.v1 import query_service_pb2_grpc as q_grpc
from ragmesh.v1 import retrieval_service_pb2 as r
from ragmesh_lab.cli.supervisor import SERVICES, Stack, health
from tests.support import fuzz, rawh2

DIM = 384
VECTOR = b"\x01" * 4 * DIM
PASSAGE = common_pb2.Passage(
    chunk_id="doc#0", document_id="doc", text="The harbor opens at dawn. Boats leave early."
)
DOC = q.Document(document_id="fuzz-doc", title="T", text="A short document to ingest.")
QUESTION = "When does the harbor open?"
QUERIES = common_pb2.VectorBatch(count=1, dimension=DIM, data=b"\x01" * 4 * DIM)
CHUNK = r.Chunk(chunk_id="c", document_id="d", text="t", metadata={"k": "v"}, vector=VECTOR)
PARAMS = common_pb2.GenerationParams(max_tokens=16)
# (service, method, seed request, streams, requests, seconds)
METHODS = [
    (
        "embedding",
        "EmbeddingService/Embed",
        e.EmbedRequest(texts=["a", "b c"], purpose=1),
        False,
        1500,
        45,
    ),
    (
        "retrieval",
        "RetrievalService/Search",
        r.SearchRequest(tenant="default", queries=QUERIES, top_k=5, filter={"k": "v"}),
        False,
        1500,
        25,
    ),
    (
        "retrieval",
        "RetrievalService/Upsert",
        r.UpsertRequest(tenant="default", chunks=[CHUNK]),
        False,
        1000,
        25,
    ),
    (
        "retrieval",
        "RetrievalService/Delete",
        r.DeleteRequest(tenant="default", chunk_ids=["c"], document_ids=["d"]),
        False,
        500,
        15,
    ),
    ("retrieval", "RetrievalService/GetIndexInfo", r.GetIndexInfoRequest(), False, 300, 10),
    (
        "generation",
        "GenerationService/Generate",
        g.GenerateRequest(question=QUESTION, passages=[PASSAGE], params=PARAMS),
        True,
        1000,
        45,
    ),
    ("query", "QueryService/Ask", q.AskRequest(question=QUESTION, top_k=3), True, 400, 45),
    ("query", "QueryService/Ingest", q.IngestRequest(documents=[DOC]), False, 500, 25),
    ("query", "QueryService/GetIngestJob", q.GetIngestJobRequest(job_id="0" * 32), False, 600, 10),
]
HOSTILE_HEADERS = [
    (b"x-request-id", b"\x80\xff"),
    (b"baggage", b"k=\xc3("),
    (b"traceparent", b"00-zz-\x01-01"),
    (b"grpc-timeout", b"1n"),
    (b"x-b3-traceid", b"\xfe" * 64),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("fuzz"), env={"RAGMESH_INGEST_CLAIM_IDLE_MS": "1000"})
    try:
        s.up()
        _ingest(s)  # an index in use: it records the served embedding model before the fuzzing
        yield s
    finally:
        s.down()


def _ingest(s: Stack) -> None:
    with grpc.insecure_channel(s.procs["query"].address) as channel:
        stub = q_grpc.QueryServiceStub(channel)
        job = stub.Ingest(q.IngestRequest(documents=[DOC]), timeout=30).job_id
        deadline = time.monotonic() + 120
        while stub.GetIngestJob(q.GetIngestJobRequest(job_id=job), timeout=10).state != (
            q.INGEST_JOB_STATE_SUCCEEDED
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)


async def _one(channel: grpc.aio.Channel, path: str, body: bytes, streams: bool) -> str:
    try:
        if streams:
            call = channel.unary_stream(path)(body, timeout=30)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path)(body, timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def _fuzz_method(
    address: str, path: str, seed: Message, streams: bool, count: int, seconds: float
) -> collections.Counter[str]:
    rng = random.Random(path)
    codes: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds
    bodies = iter(lambda: fuzz.request(seed, rng, DIM), None)
    async with grpc.aio.insecure_channel(address) as channel:

        async def worker() -> None:
            for body in bodies:
                if sum(codes.values()) >= count or time.monotonic() > deadline:
                    return
                codes[await _one(channel, path, body, streams)] += 1

        await asyncio.gather(*(worker() for _ in range(8)))
    return codes


@pytest.mark.parametrize(("service", "method", "seed", "streams", "count", "seconds"), METHODS)
async def test_generated_requests_get_a_clear_status(
    stack: Stack,
    service: str,
    method: str,
    seed: Message,
    streams: bool,
    count: int,
    seconds: float,
) -> None:
    path = f"/ragmesh.v1.{method}"
    codes = await _fuzz_method(stack.procs[service].address, path, seed, streams, count, seconds)
    print(f"{method}: {dict(codes)}")
    assert sum(codes.values()) >= min(count, 100)
    assert not codes.keys() & {"INTERNAL", "UNKNOWN"}, dict(codes)
    for name in SERVICES:
        assert stack.procs[name].popen.poll() is None, f"{name} died"


def test_hostile_headers_on_every_method_are_not_internal(stack: Stack) -> None:
    for service, method, seed, _, _, _ in METHODS:
        port = stack.procs[service].grpc_port
        for header in HOSTILE_HEADERS:
            reply = rawh2.call(
                port, f"/ragmesh.v1.{method}", rawh2.frame(seed.SerializeToString()), [header]
            )
            assert reply.code not in (2, 13), (method, header, reply.code, reply.message)


def test_after_the_fuzzing_every_service_serves_and_answers(stack: Stack) -> None:
    for name in SERVICES:
        assert health(stack.procs[name].address) == "SERVING", name
    with grpc.insecure_channel(stack.procs["query"].address) as channel:
        stream = channel.unary_stream(
            "/ragmesh.v1.QueryService/Ask",
            request_serializer=q.AskRequest.SerializeToString,
            response_deserializer=q.AskResponse.FromString,
        )
        events = list(stream(q.AskRequest(question="When does the harbor open?"), timeout=60))
    assert events[-1].HasField("done")
