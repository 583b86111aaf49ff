"""The OpenAI-compatible API of the query service on the real stack (real MiniLM, FAISS,
Redis, the extractive engine), called with the official ``openai`` SDK and with curl, as a
user points them at it: chat completions streamed and not, models, and errors in OpenAI's
shape."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest

from ragmesh.v1 import query_service_pb2 as q
from ragmesh.v1 import query_service_pb2_grpc
from ragmesh_lab.cli.documents import read_document
from ragmesh_lab.cli.supervisor import Stack
from tests.e2e.test_stack import CORPUS, FACT, QUESTION


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("stack"),
        env={"RAGMESH_OPENAI_MODELS": "ragmesh=1, ragmesh-wide=3"},
    )
    try:
        s.up()
        docs = [read_document(p, CORPUS) for p in sorted(CORPUS.iterdir())]
        with grpc.insecure_channel(s.procs["query"].address) as channel:
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            job = stub.Ingest(
                q.IngestRequest(
                    documents=[
                        q.Document(document_id=d.document_id, title=d.title, text=d.text)
                        for d in docs
                    ]
                ),
                timeout=10,
            ).job_id
            deadline = time.monotonic() + 120
            while stub.GetIngestJob(q.GetIngestJobRequest(job_id=job), timeout=5).state != (
                q.INGEST_JOB_STATE_SUCCEEDED
            ):
                assert time.monotonic() < deadline, "the corpus was not indexed"
                time.sleep(0.1)
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.procs['query'].http_port}/v1"


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="unused-without-a-gateway", max_retries=0) as c:
        yield c


def test_models_lists_the_configured_profiles(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["ragmesh", "ragmesh-wide"]
    assert client.models.retrieve("ragmesh-wide").owned_by == "ragmesh"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_chat_completion_answers_with_markers_and_citations(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="ragmesh",
        messages=[
            {"role": "system", "content": "You answer from the documents."},
            {"role": "user", "content": "What grows in the orchard?"},
            {"role": "assistant", "content": "Apples."},
            {"role": "user", "content": QUESTION},  # the last user message is the question
        ],
    )
    (choice,) = done.choices
    text = choice.message.content or ""
    assert FACT in text and choice.finish_reason == "stop"
    citations = (done.model_extra or {})["citations"]
    assert len(citations) == 1  # the profile's top_k
    assert "[1]" in text and citations[0]["index"] == 1
    assert citations[0]["document_id"] == "lighthouse.md"
    assert done.usage is not None and done.usage.completion_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert done.model == "ragmesh" and done.id.startswith("chatcmpl-")


def test_a_streamed_chat_completion_arrives_as_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="ragmesh-wide",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=3,
    )
    chunks = list(stream)
    first, usage = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert len((first.model_extra or {})["citations"]) == 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert len(text.split()) == 3  # the extractive engine's tokens are words
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 3
    assert len({c.id for c in chunks}) == 1


def test_bad_requests_are_openai_errors_naming_the_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="ragmesh", messages=[], max_tokens=5)
    assert bad.value.param == "messages" and bad.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="ragmesh", messages=[{"role": "user", "content": QUESTION}], temperature=3
        )
    assert bad.value.param == "temperature"
    assert bad.value.message.endswith("- temperature: must be between 0 and 2")
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": QUESTION}]
        )
    assert missing.value.code == "model_not_found"


def test_curl_streams_server_sent_events(base_url: str) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is installed by make system-deps"
    body = {"model": "ragmesh", "messages": [{"role": "user", "content": QUESTION}]}
    out = subprocess.run(
        [curl, "-sS", "-N", f"{base_url}/chat/completions", "-H", "content-type: application/json"]
        + ["-d", json.dumps({**body, "stream": True})],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line.removeprefix("data: ") for line in out.split("\n\n") if line]
    assert events[-1] == "[DONE]" and all(e.startswith("{") for e in events[:-1])
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["citations"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert FACT in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_malformed_json_is_a_400_in_openais_shape(base_url: str) -> None:
    reply = httpx.post(f"{base_url}/chat/completions", content=b"{not json", timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "body"
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.headers["x-request-id"]


def test_min_index_version_reads_your_writes_through_the_sdks_extra_body(
    client: openai.OpenAI,
) -> None:
    """ragmesh's extension reaches retrieval: the version the corpus reached answers, a
    version nobody wrote is 503 (UNAVAILABLE) naming both versions."""
    ask = {"model": "ragmesh", "messages": [{"role": "user", "content": QUESTION}]}
    done = client.chat.completions.create(**ask, extra_body={"min_index_version": 1})
    assert done.choices[0].message.content
    with pytest.raises(openai.InternalServerError) as behind:
        client.chat.completions.create(**ask, extra_body={"min_index_version": 10**9})
    assert behind.value.status_code == 503
    assert "not yet 1000000000" in behind.value.message
