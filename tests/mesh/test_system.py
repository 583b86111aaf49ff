"""The whole system behind real sidecars (``ragmesh mesh up --trace``): ingestion and cited
answers through the ingress gateway over gRPC and over REST (Envoy's transcoder), one trace
per Ask across every sidecar and service, and failover when a retrieval replica dies."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import openai
import pytest

from ragmesh.v1 import query_service_pb2 as q
from ragmesh.v1 import query_service_pb2_grpc
from ragmesh_lab.cli.__main__ import WRITES_FILE
from ragmesh_lab.cli.__main__ import main as cli
from ragmesh_lab.meshlab import traces
from ragmesh_lab.meshlab.lab import MeshLab
from ragmesh_lab.meshlab.traces import Span
from tests.support import rest
from tests.support.contract import ROOT

pytestmark = pytest.mark.slow
QUESTION = "How often does the Keelhaven light flash?"
FACT = "two white flashes every fifteen seconds"
RETRIEVAL = "cluster.outbound|50051||retrieval.rag-prod.svc.cluster.local"


@pytest.fixture(scope="module")
def token(mesh: MeshLab) -> str:
    """An end user's token from the local issuer (the ingress requires one)."""
    return mesh.token("default", ("ask", "ingest"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    lab = MeshLab(ROOT, tmp_path_factory.mktemp("fullmesh"))
    try:
        lab.start_trace_receiver()  # what `ragmesh mesh up --trace` does
        lab.up()
        yield lab
    finally:
        lab.down()


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def ask(stub: query_service_pb2_grpc.QueryServiceStub, token: str) -> str:
    answer = []
    request = q.AskRequest(question=QUESTION, skip_cache=True)
    for event in stub.Ask(request, timeout=30, metadata=bearer(token)):
        if event.WhichOneof("event") == "delta":
            answer.append(event.delta)
    return "".join(answer)


def written(mesh: MeshLab) -> int:
    """The index version the CLI's writes into this mesh reached (what its asks read)."""
    path = mesh.stack.workdir / WRITES_FILE
    return max(json.loads(path.read_text()).values()) if path.exists() else 0


def test_cli_ingests_and_asks_through_the_ingress(
    mesh: MeshLab, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(mesh.stack.workdir)
    # without a token the ingress refuses, and the CLI says what to do
    assert cli(["--data-dir", data_dir, "ask", QUESTION]) == 1
    assert "--token" in capsys.readouterr().err
    assert cli(["--data-dir", data_dir, "token", "--tenant", "default", "--scope",
                "ask,ingest", "--manifests", str(ROOT)]) == 0  # fmt: skip
    token = capsys.readouterr().out.strip()
    base = ["--data-dir", data_dir, "--token", token]
    assert cli([*base, "ingest", str(ROOT / "samples/corpus")]) == 0
    capsys.readouterr()
    # read your writes: the CLI's ask waits for the index version its ingest reached, on
    # whichever replica answers (the reader follows the writer's log)
    assert cli([*base, "ask", QUESTION]) == 0
    out = capsys.readouterr().out
    assert FACT in out and "Sources:" in out
    assert cli(["--data-dir", data_dir, "status"]) == 0
    status = capsys.readouterr().out
    # 11 Envoys; 8 apps: 7 gRPC and the API key checker
    assert status.count("LIVE") == 11 and status.count("SERVING") == 8, status
    # the writes reached the writer replica (a write landing on the reader is answered
    # UNAVAILABLE and retried by the mesh) and the reader follows it
    log = (mesh.stack.workdir / "logs" / "retrieval-1-envoy.log").read_text()
    upserts = [line for line in log.splitlines() if "RetrievalService/Upsert" in line]
    assert all("grpc=Unavailable" in line for line in upserts)


def spans_of_call(
    mesh: MeshLab, method: str, since_ns: int, want: int, timeout: float = 20.0
) -> list[Span]:
    """Every received span of the traces holding a call of ``method`` (the service's server
    span) that started after ``since_ns``, once at least ``want`` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        spans = traces.read(mesh.traces_file)
        calls = {s.trace_id for s in spans if s.name == method and s.start_ns >= since_ns}
        found = [s for s in spans if s.trace_id in calls]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def abandoned_attempt(span: Span) -> bool:
    """A try that did not complete: a sidecar span with Envoy response flags (the caller's
    sidecar reset it at its per-try timeout, then retried) or a server span ending in error."""
    flags = span.attributes.get("response_flags", "-")
    return flags != "-" or span.status == "error"


def ancestors(span: Span, by_id: dict[str, Span]) -> list[str]:
    """``service/kind`` of each span above ``span``, nearest first."""
    out = []
    while span.parent_span_id:
        span = by_id[span.parent_span_id]
        out.append(f"{span.service}/{span.kind}")
    return out


def test_one_ask_is_one_trace_through_every_sidecar_and_service(
    mesh: MeshLab, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with grpc.insecure_channel(mesh.ingress_address) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        ask(stub, token)  # the query service learns the models' names: the cache is next
        since = time.time_ns()
        # on an index with the corpus the CLI ingested, whichever replica answers
        question = q.AskRequest(
            question="Which apples does the orchard grow?", min_index_version=written(mesh)
        )
        events = list(stub.Ask(question, timeout=30, metadata=bearer(token)))
    assert events[-1].WhichOneof("event") == "done"
    # ingress 1, query 11 (sidecar in + out ×3, server, 3 clients, 2 cache lookups), embedding 3,
    # retrieval 3, generation 4 (sidecar, server, own spans)
    spans = spans_of_call(mesh, "/ragmesh.v1.QueryService/Ask", since, want=21)
    assert len({s.trace_id for s in spans}) == 1, "the Ask left more than one trace"
    assert len(spans) == 21, sorted(f"{s.service} {s.name}" for s in spans)
    # the ingress made up the request id; every sidecar and service carried it on
    envoy_ids = {s.attributes["guid:x-request-id"] for s in spans if "." in s.service}
    assert len(envoy_ids) == 1
    request_id = envoy_ids.pop()
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert [(r.service, r.kind) for r in roots] == [("istio-ingressgateway.istio-system", "client")]
    assert all(s.parent_span_id in by_id for s in spans if s is not roots[0]), "dangling parent"

    def one(service: str, name: str) -> Span:
        matching = [s for s in spans if s.service == service and s.name == name]
        assert len(matching) == 1, f"{service} {name}: {len(matching)} spans"
        return matching[0]

    ask_span = one("query", "/ragmesh.v1.QueryService/Ask")
    assert ancestors(ask_span, by_id) == [
        "query.rag-prod/server",
        "istio-ingressgateway.istio-system/client",
    ]
    assert "first_token" in ask_span.events
    for workload, method, own in (
        ("embedding", "EmbeddingService/Embed", ["embedding.batch"]),
        ("retrieval", "RetrievalService/Search", ["faiss.search"]),
        ("generation", "GenerationService/Generate", ["generation.prompt", "generation.generate"]),
    ):
        server = one(workload, f"/ragmesh.v1.{method}")
        assert server.kind == "server"
        assert server.attributes["rpc.grpc.request.metadata.x-request-id"] == [request_id]
        # app ← its sidecar ← query's sidecar ← query's client span ← the Ask ← ...
        assert ancestors(server, by_id) == [
            f"{workload}.rag-prod/server",
            "query.rag-prod/client",
            "query/client",
            "query/server",
            "query.rag-prod/server",
            "istio-ingressgateway.istio-system/client",
        ]
        assert by_id[server.parent_span_id].attributes["guid:x-request-id"] == request_id
        for name in own:
            assert one(workload, name).parent_span_id == server.span_id
    assert "first_token" in one("generation", "generation.generate").events
    lookups = [s for s in spans if s.name == "cache.lookup"]
    assert sorted(s.attributes["ragmesh.cache"] for s in lookups) == ["answer", "embedding"]
    assert all(s.parent_span_id == ask_span.span_id for s in lookups)

    # the services' log lines of the call carry the same ids
    generate = one("generation", "/ragmesh.v1.GenerationService/Generate")
    log = (mesh.stack.workdir / "logs" / "generation.log").read_text().splitlines()
    lines = [json.loads(x) for x in log if request_id in x]
    assert lines and all(
        (x["trace_id"], x["span_id"]) == (generate.trace_id, generate.span_id) for x in lines
    )
    # and `ragmesh traces` prints the tree
    assert cli(["--data-dir", str(mesh.stack.workdir), "traces", generate.trace_id]) == 0
    tree = capsys.readouterr().out
    assert f"trace {generate.trace_id}  {len(spans)} spans" in tree
    assert "generation internal generation.generate" in tree


def test_an_ingest_job_continues_the_trace_of_its_ingest_call(mesh: MeshLab, token: str) -> None:
    """The queued document carries the call's trace and request id to the ingest worker."""
    since = time.time_ns()
    doc = q.Document(document_id="traced-doc", title="Traced", text="A traced document. " * 5)
    with grpc.insecure_channel(mesh.ingress_address) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        job = stub.Ingest(q.IngestRequest(documents=[doc]), timeout=10, metadata=bearer(token))
        job = job.job_id
        deadline = time.monotonic() + 60
        status = q.GetIngestJobRequest(job_id=job)
        while stub.GetIngestJob(status, timeout=5, metadata=bearer(token)).state in (
            q.INGEST_JOB_STATE_QUEUED,
            q.INGEST_JOB_STATE_RUNNING,
        ):
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.1)
    # ingress, query (sidecar, server); ingest.document, its Embed and Upsert (client, ingest's
    # sidecar, the callee's sidecar, server) and the embedding batch
    # (a loaded machine may add an attempt a sidecar abandoned and retried: not counted)
    received = spans_of_call(mesh, "/ragmesh.v1.QueryService/Ingest", since, want=13)
    spans = [s for s in received if not abandoned_attempt(s)]
    assert len({s.trace_id for s in received}) == 1 and len(spans) == 13, sorted(
        f"{s.service} {s.name} {s.status} {s.attributes.get('response_flags', '')}"
        for s in received
    )
    by_id = {s.span_id: s for s in spans}
    (ingest_call,) = [s for s in spans if s.name == "/ragmesh.v1.QueryService/Ingest"]
    (document,) = [s for s in spans if s.name == "ingest.document"]
    assert document.kind == "consumer" and document.service == "ingest"
    assert document.parent_span_id == ingest_call.span_id
    assert document.attributes["ragmesh.document_id"] == "traced-doc"
    request_id = ingest_call.attributes["rpc.grpc.request.metadata.x-request-id"]
    for method in ("EmbeddingService/Embed", "RetrievalService/Upsert"):
        (server,) = [s for s in spans if s.name == f"/ragmesh.v1.{method}" and s.kind == "server"]
        assert server.attributes["rpc.grpc.request.metadata.x-request-id"] == request_id
        assert ancestors(server, by_id)[1:5] == [  # after the callee's own sidecar
            "ingest.rag-prod/client",
            "ingest/client",
            "ingest/consumer",
            "query/server",
        ]


def test_rest_ask_streams_ndjson_as_it_is_generated(mesh: MeshLab, token: str) -> None:
    """POST /v1/ask through the ingress's transcoder: one JSON message per line, citations
    first, and the lines arrive while the answer is still being generated."""
    body = {"question": QUESTION, "topK": 2, "skipCache": True}
    status, lines = rest.stream(f"{mesh.rest_url}/v1/ask", body, token)
    assert status == 200
    kinds = [next(iter(message)) for _, message in lines]
    assert kinds[0] == "citations" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"} and len(kinds) >= 3  # a delta per sentence
    citations = lines[0][1]["citations"]["citations"]
    assert citations[0]["documentId"].endswith("lighthouse.md") and citations[0]["marker"] == 1
    assert FACT in "".join(m["delta"] for _, m in lines[1:-1])
    done = lines[-1][1]["done"]
    assert done["finishReason"] == "FINISH_REASON_STOP" and done["cacheHit"] is False
    # A bridge that buffered the stream could deliver nothing before the server finished;
    # the server's clock starts after the client's, so this holds only if lines stream.
    citations_at, total_ms = lines[0][0], done["timings"]["totalMs"]
    assert citations_at < total_ms, (citations_at, total_ms)


def test_rest_ingest_and_job_round_trip(mesh: MeshLab, token: str) -> None:
    url = mesh.rest_url
    doc = {"documentId": "rest-note", "title": "Tide gauge", "text": "The Selby tide gauge "
           "was installed in 1903. It records the water level every ten minutes."}  # fmt: skip
    # an unknown field is dropped by the transcoder, not an error
    body = {"documents": [doc], "x": 1}
    status, _, queued = rest.call(f"{url}/v1/documents:ingest", body, token=token)
    assert status == 200 and queued["documentCount"] == 1
    deadline = time.monotonic() + 60
    while True:
        status, _, job = rest.call(f"{url}/v1/ingest-jobs/{queued['jobId']}", token=token)
        assert status == 200 and job["jobId"] == queued["jobId"]
        if job["state"] not in ("INGEST_JOB_STATE_QUEUED", "INGEST_JOB_STATE_RUNNING"):
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["state"] == "INGEST_JOB_STATE_SUCCEEDED" and job["chunksDone"] == 1
    # read your writes: the job's index version, asked for (proto3 JSON: uint64 as a string)
    assert int(job["indexVersion"]) > 0
    question = {
        "question": "When was the tide gauge installed?",
        "skipCache": True,
        "minIndexVersion": job["indexVersion"],
    }
    status, lines = rest.stream(f"{url}/v1/ask", question, token)
    cited = lines[0][1]["citations"]["citations"][0]["documentId"]
    assert status == 200 and cited == "rest-note"


@pytest.mark.parametrize(
    ("path", "body", "status", "grpc_code", "field"),
    [
        ("/v1/ask", {"question": ""}, 400, 3, "question"),
        # a misspelled field is dropped by the transcoder: the service sees no question
        ("/v1/ask", {"questoin": "How often does the light flash?"}, 400, 3, "question"),
        ("/v1/ask", {"question": "x", "topK": 1000}, 400, 3, "top_k"),
        ("/v1/documents:ingest", {"docs": [{"documentId": "a", "text": "b"}]}, 400, 3, "documents"),
        ("/v1/documents:ingest", {"documents": [{"documentId": "a b", "text": "c"}]}, 400, 3,
         "documents[0].document_id"),
        ("/v1/ingest-jobs/not-a-job", None, 400, 3, "job_id"),
        ("/v1/ingest-jobs/" + "0" * 32, None, 404, 5, "job_id"),
    ],
)  # fmt: skip
def test_rest_rejects_bad_input_with_a_status_and_a_json_error(
    mesh: MeshLab, token: str, path: str, body: Any, status: int, grpc_code: int, field: str
) -> None:
    got, headers, error = rest.call(mesh.rest_url + path, body, token=token)
    assert got == status and headers["content-type"] == "application/json", error
    assert error["code"] == grpc_code and error["message"].startswith(f"{field}:"), error


def test_rest_paths_outside_the_api_are_not_found(mesh: MeshLab, token: str) -> None:
    for path in ("/v1/nothing", "/ragmesh.v1.RetrievalService/Search", "/v1/ask/extra"):
        status, _, _ = rest.call(mesh.rest_url + path, {}, token=token)
        assert status == 404, path
    # a route with a query parameter it does not know is no route either
    status, _, _ = rest.call(f"{mesh.rest_url}/v1/ingest-jobs/{'0' * 32}?bogus=1", token=token)
    assert status == 404


def test_rest_without_a_token_or_with_a_bad_one_is_unauthenticated(
    mesh: MeshLab, token: str
) -> None:
    body = {"question": QUESTION}
    status, headers, error = rest.call(f"{mesh.rest_url}/v1/ask", body)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="ragmesh"', error
    status, _, error = rest.call(f"{mesh.rest_url}/v1/ask", body, token=token[:-4] + "AAAA")
    assert status == 401, error


SECRET = "The Acme vault opens with the code 4711 purple."
SECRET_QUESTION = "What code opens the Acme vault?"


def wait_job(stub: query_service_pb2_grpc.QueryServiceStub, job: str, token: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        status = stub.GetIngestJob(
            q.GetIngestJobRequest(job_id=job), timeout=5, metadata=bearer(token)
        )
        if status.state not in (q.INGEST_JOB_STATE_QUEUED, q.INGEST_JOB_STATE_RUNNING):
            return status
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)


def cited(
    stub: query_service_pb2_grpc.QueryServiceStub,
    token: str,
    extra: tuple[tuple[str, str], ...] = (),
    skip_cache: bool = True,
    version: int = 0,
) -> tuple[list[str], str, bool]:
    """(the cited snippets, the answer, whether it came from the cache) of SECRET_QUESTION,
    from an index of at least ``version``."""
    snippets, answer, hit = [], [], False
    request = q.AskRequest(
        question=SECRET_QUESTION, skip_cache=skip_cache, min_index_version=version
    )
    for event in stub.Ask(request, timeout=30, metadata=bearer(token) + extra):
        kind = event.WhichOneof("event")
        if kind == "citations":
            snippets = [c.snippet for c in event.citations.citations]
        elif kind == "delta":
            answer.append(event.delta)
        else:
            hit = event.done.cache_hit
    return snippets, "".join(answer), hit


def test_tenants_never_read_each_others_documents(mesh: MeshLab) -> None:
    """Tenant acme's document through every path tenant globex has: Ask over gRPC and REST,
    the answer cache, a forged tenant header, job status, its own document of the same id,
    and deletion. Then acme deletes it and no longer finds it either."""
    acme = mesh.token("acme", ("ask", "ingest", "delete"))
    globex = mesh.token("globex", ("ask", "ingest", "delete"))
    with grpc.insecure_channel(mesh.ingress_address) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        doc = q.Document(document_id="vault", title="Vault", text=SECRET)
        job = stub.Ingest(q.IngestRequest(documents=[doc]), timeout=10, metadata=bearer(acme))
        written = wait_job(stub, job.job_id, acme)
        assert written.state == q.INGEST_JOB_STATE_SUCCEEDED
        # another tenant's job id is unknown to globex, exactly as a made-up one
        with pytest.raises(grpc.RpcError) as e:
            wait_job(stub, job.job_id, globex)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        # read your writes: from the job's index version on, on any replica
        version = written.index_version
        assert "4711" in " ".join(cited(stub, acme, version=version)[0])
        assert "4711" in " ".join(cited(stub, acme, skip_cache=False)[0])  # cached for acme
        assert cited(stub, acme, skip_cache=False)[2]
        # the same question from globex: acme's cached answer is not globex's
        snippets, answer, hit = cited(stub, globex, skip_cache=False)
        assert "4711" not in " ".join(snippets) + answer and not hit
        forged = (("x-ragmesh-tenant", "acme"),)  # a client's own tenant header changes nothing
        snippets, answer, _ = cited(stub, globex, forged)
        assert "4711" not in " ".join(snippets) + answer
        status, lines = rest.stream(
            f"{mesh.rest_url}/v1/ask", {"question": SECRET_QUESTION}, globex
        )
        assert status == 200 and "4711" not in json.dumps(lines)
        # globex's own "vault" and its deletion leave acme's alone
        mine = q.Document(document_id="vault", title="Vault", text="Globex keeps no vault.")
        job = stub.Ingest(q.IngestRequest(documents=[mine]), timeout=10, metadata=bearer(globex))
        assert wait_job(stub, job.job_id, globex).state == q.INGEST_JOB_STATE_SUCCEEDED
        status, _, deleted = rest.call(
            f"{mesh.rest_url}/v1/documents/vault", method="DELETE", token=globex
        )
        assert status == 200
        assert wait_job(stub, deleted["jobId"], globex).chunks_done == 1
        assert "4711" in " ".join(cited(stub, acme)[0])
        # acme deletes its document: gone for acme too, cache included
        job = stub.DeleteDocument(
            q.DeleteDocumentRequest(document_id="vault"), timeout=10, metadata=bearer(acme)
        )
        done = wait_job(stub, job.job_id, acme)
        assert done.state == q.INGEST_JOB_STATE_SUCCEEDED and done.chunks_done == 1
        assert done.index_version > version
        snippets = cited(stub, acme, skip_cache=False, version=done.index_version)[0]
        assert "4711" not in " ".join(snippets), "the deleted document is still cited"


ROBOT_FACT = "The Tinmoor signal box is painted ochre."


def test_a_machine_client_with_an_api_key_works_only_in_its_keys_tenant(
    mesh: MeshLab, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ragmesh keys create` mints a key into the local mesh's key file; the CLI ingests and
    asks with it over gRPC, curl-style REST asks with it, and its tenant's document is
    invisible to another tenant's token and to a key without the ask scope."""
    data_dir = str(mesh.stack.workdir)
    assert cli(["--data-dir", data_dir, "keys", "create", "--tenant", "robots", "--scope",
                "ask,ingest", "--name", "nightly-import"]) == 0  # fmt: skip
    key = capsys.readouterr().out.strip()
    assert key.startswith("rmk_") and key not in mesh.keys_file.read_text()
    time.sleep(1.1)  # the checker re-reads its key file at most once a second
    document = mesh.stack.workdir / "signal-box.txt"
    document.write_text(ROBOT_FACT)
    assert cli(["--data-dir", data_dir, "--api-key", key, "ingest", str(document)]) == 0
    capsys.readouterr()
    question = "What colour is the Tinmoor signal box painted?"
    # read your writes: the CLI asks for the index version its ingest reached
    assert cli(["--data-dir", data_dir, "--api-key", key, "ask", question]) == 0
    out = capsys.readouterr().out
    assert "signal-box.txt" in out and "ochre" in out
    status, lines = rest.stream(f"{mesh.rest_url}/v1/ask", {"question": question}, api_key=key)
    assert status == 200 and "signal-box.txt" in json.dumps(lines)
    other = mesh.token("default", ("ask",))
    status, lines = rest.stream(f"{mesh.rest_url}/v1/ask", {"question": question}, other)
    assert status == 200 and "signal-box.txt" not in json.dumps(lines)
    assert cli(["--data-dir", data_dir, "keys", "create", "--tenant", "robots"]) == 0
    ask_only = capsys.readouterr().out.strip()
    time.sleep(1.1)
    assert cli(["--data-dir", data_dir, "--api-key", ask_only, "ingest", str(document)]) == 1
    assert "lacks the scope 'ingest'" in capsys.readouterr().err


def sdk(mesh: MeshLab, key: str) -> openai.OpenAI:
    """OpenAI's client for the gateway's OpenAI-compatible routes (close it: ``with``)."""
    return openai.OpenAI(base_url=f"{mesh.rest_url}/v1", api_key=key, max_retries=0)


def test_the_openai_sdk_through_the_ingress(mesh: MeshLab, token: str) -> None:
    """The official SDK against the gateway's OpenAI-compatible routes (the token as its API
    key): models, a streamed and a whole chat completion with citations, and curl's stream;
    the end-user rules hold there too (no token: 401, no ask scope: 403), and the answer is
    the caller's tenant's (another tenant's token sees none of the corpus)."""
    messages: Any = [{"role": "user", "content": QUESTION}]
    with sdk(mesh, token) as client:
        assert [m.id for m in client.models.list()] == ["ragmesh"]
        stream = client.chat.completions.create(model="ragmesh", messages=messages, stream=True)
        chunks = list(stream)
        whole = client.chat.completions.create(model="ragmesh", messages=messages)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert FACT in text and chunks[-1].choices[0].finish_reason == "stop"
    cited = (chunks[0].model_extra or {})["citations"]
    assert cited[0]["document_id"].endswith("lighthouse.md") and "[1]" in text
    assert FACT in (whole.choices[0].message.content or "")
    assert (whole.model_extra or {})["citations"] == cited
    # the gateway's own refusals, in OpenAI's error shape (the SDK shows the reason)
    with pytest.raises(openai.AuthenticationError) as refused, sdk(mesh, "not-a-token") as c:
        c.models.list()
    assert refused.value.body == {
        "message": "Jwt is not in the form of Header.Payload.Signature with two dots and 3 "
        "sections",
        "type": "authentication_error",
        "param": None,
        "code": None,
    }
    no_ask = mesh.token("default", ("ingest",))
    with pytest.raises(openai.PermissionDeniedError) as denied, sdk(mesh, no_ask) as c:
        c.chat.completions.create(model="ragmesh", messages=messages)
    assert denied.value.message == "Error code: 403 - RBAC: access denied"
    assert isinstance(denied.value.body, dict) and denied.value.type == "permission_error"
    # curl, as the docs show it: server-sent events through the gateway
    out = subprocess.run(
        ["curl", "-sSN", f"{mesh.rest_url}/v1/chat/completions", "-H",
         f"authorization: Bearer {token}", "-H", "content-type: application/json", "-d",
         json.dumps({"model": "ragmesh", "messages": messages, "stream": True})],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    events = [e.removeprefix("data: ") for e in out.split("\n\n") if e]
    assert events[-1] == "[DONE]" and json.loads(events[0])["citations"] == cited
    with sdk(mesh, mesh.token("initech", ("ask",))) as elsewhere:
        other = elsewhere.chat.completions.create(model="ragmesh", messages=messages)
    assert (other.model_extra or {})["citations"] == []
    assert FACT not in (other.choices[0].message.content or "")


def test_the_openai_sdk_with_an_api_key_as_its_key(
    mesh: MeshLab, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenAI's SDK sends its key as a bearer token: a ragmesh API key sent so is checked as
    an API key (its tenant, its scopes), and an unknown one is refused."""
    data_dir = str(mesh.stack.workdir)
    assert cli(["--data-dir", data_dir, "keys", "create", "--tenant", "default"]) == 0
    key = capsys.readouterr().out.strip()
    assert cli(["--data-dir", data_dir, "keys", "create", "--tenant", "default", "--scope",
                "ingest"]) == 0  # fmt: skip
    ingest_only = capsys.readouterr().out.strip()
    time.sleep(1.1)  # the checker re-reads its key file at most once a second
    messages: Any = [{"role": "user", "content": QUESTION}]
    with sdk(mesh, key) as client:
        done = client.chat.completions.create(model="ragmesh", messages=messages)
    assert FACT in (done.choices[0].message.content or "")
    with pytest.raises(openai.PermissionDeniedError) as denied, sdk(mesh, ingest_only) as client:
        client.models.list()
    assert isinstance(denied.value.body, dict)
    assert denied.value.body["message"].endswith("lacks the scope 'ask'")
    unknown = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(openai.AuthenticationError), sdk(mesh, unknown) as client:
        client.models.list()


def test_retrieval_replica_killed_during_asks(mesh: MeshLab, token: str) -> None:
    """Two callers ask continuously; one retrieval replica (app and sidecar) is killed.
    Last in this module: the replica killed is the writer, so nothing is ingested after."""
    stats_before = mesh.sidecars["query"].stats()
    results: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        with grpc.insecure_channel(mesh.ingress_address) as channel:
            stub = query_service_pb2_grpc.QueryServiceStub(channel)
            while not stop.is_set():
                try:
                    results.append(ask(stub, token))
                except grpc.RpcError as e:
                    failures.append(f"{e.code()}: {e.details()}")  # type: ignore[attr-defined]

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()

    def wait_for(count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(results) + len(failures) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        wait_for(3)
        before_kill = len(results)
        mesh.stack.kill("retrieval-0")
        mesh.stack.kill("retrieval-0-envoy")
        wait_for(before_kill + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == []
    assert before_kill >= 3 and len(results) - before_kill >= 20
    assert all(FACT in answer for answer in results)  # the reader serves the same index
    stats = mesh.sidecars["query"].stats()
    ejected = stats[f"{RETRIEVAL}.outlier_detection.ejections_enforced_total"]
    assert (
        ejected - stats_before.get(f"{RETRIEVAL}.outlier_detection.ejections_enforced_total", 0)
        >= 1
    )
    assert stats[f"{RETRIEVAL}.outlier_detection.ejections_active"] == 1
