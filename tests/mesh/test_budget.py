"""A tenant's generated-token budget through the real ingress, sidecars and services: once
the tenant's minute is spent, its next Ask is refused before anything is generated, over
gRPC (RESOURCE_EXHAUSTED) and REST (429), with a message naming the budget; another
tenant is not affected."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from ragmesh.v1 import query_service_pb2 as q
from ragmesh.v1 import query_service_pb2_grpc
from ragmesh_lab.meshlab.lab import MeshLab
from tests.support import rest
from tests.support.contract import ROOT

pytestmark = pytest.mark.slow
BUDGET = 30  # generated tokens per tenant and minute


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshLab]:
    lab = MeshLab(ROOT, tmp_path_factory.mktemp("budgetmesh"))
    lab.stack.env = {**lab.stack.env, "RAGMESH_TENANT_TOKENS_PER_MINUTE": str(BUDGET)}
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def test_a_tenant_over_its_budget_is_refused_through_the_ingress(mesh: MeshLab) -> None:
    acme = mesh.token("acme", ("ask", "ingest"))
    question = "How often does the Keelhaven light flash?"
    request = q.AskRequest(question=question, skip_cache=True)
    metadata = (("authorization", f"Bearer {acme}"),)
    spent = 0
    with grpc.insecure_channel(mesh.ingress_address) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        # the tenant's document: a question no document answers generates (and spends) nothing
        text = (ROOT / "samples" / "corpus" / "lighthouse.md").read_text()
        ingest = q.IngestRequest(documents=[q.Document(document_id="lighthouse.md", text=text)])
        job = stub.Ingest(ingest, timeout=10, metadata=metadata).job_id
        deadline = time.monotonic() + 120
        while (
            stub.GetIngestJob(q.GetIngestJobRequest(job_id=job), timeout=5, metadata=metadata).state
            != q.INGEST_JOB_STATE_SUCCEEDED
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as e:
            for _ in range(BUDGET + 1):  # each answer costs at least one token
                for event in stub.Ask(request, timeout=30, metadata=metadata):
                    if event.WhichOneof("event") == "done":
                        spent += event.done.usage.completion_tokens
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"budget of {BUDGET} generated tokens per minute" in (e.value.details() or "")
        assert spent >= BUDGET
        body = {"question": question, "skipCache": True}
        status, _, error = rest.call(f"{mesh.rest_url}/v1/ask", body, token=acme)
        assert status == 429 and f"budget of {BUDGET}" in str(error), error
        # another tenant's budget is its own
        globex = (("authorization", f"Bearer {mesh.token('globex', ('ask',))}"),)
        events = list(stub.Ask(request, timeout=30, metadata=globex))
        assert events[-1].WhichOneof("event") == "done"
