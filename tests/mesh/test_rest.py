"""The REST bridge's error mapping through real Envoys: the ingress gateway's transcoder in
front of query's sidecar, with a scripted query application answering each gRPC status.
(The bridge in front of the real services: tests/mesh/test_system.py.)"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ragmesh_lab.meshlab.lab import INGRESS
from tests.mesh.conftest import FakeMesh
from tests.support import rest
from tests.support.fakeapp import fail

pytestmark = pytest.mark.slow
INGEST = "/ragmesh.v1.QueryService/Ingest"


def rest_url(mesh: FakeMesh) -> str:
    if INGRESS not in mesh.lab.sidecars:
        mesh.lab.start_ingress()
    return mesh.lab.rest_url


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ],
)
async def test_grpc_errors_become_http_statuses_with_a_json_body(
    fake_mesh: FakeMesh, code: grpc.StatusCode, status: int
) -> None:
    url = rest_url(fake_mesh)
    app = fake_mesh.apps["query"]
    before = app.count(INGEST)
    app.script[INGEST].append(fail(code))
    body = {"documents": [{"documentId": "d", "text": "t"}]}
    got, headers, error = await asyncio.to_thread(
        rest.call, f"{url}/v1/documents:ingest", body, token=fake_mesh.lab.token()
    )
    assert app.count(INGEST) == before + 1  # it reached the application once
    assert got == status and headers["content-type"] == "application/json", error
    assert error == {"code": code.value[0], "message": f"scripted {code.name}", "details": []}


async def test_the_json_body_becomes_the_grpc_request(fake_mesh: FakeMesh) -> None:
    """The call arrives as gRPC on the QueryService path, from the gateway's identity."""
    url = rest_url(fake_mesh)
    app = fake_mesh.apps["query"]
    got, _, reply = await asyncio.to_thread(
        rest.call, f"{url}/v1/ingest-jobs/{'a' * 32}", token=fake_mesh.lab.token()
    )
    assert got == 200
    assert reply == {  # every field printed, zero values included
        "jobId": "",
        "state": "INGEST_JOB_STATE_UNSPECIFIED",
        "documentsTotal": 0,
        "documentsDone": 0,
        "documentsFailed": 0,
        "chunksDone": 0,
        "chunksFailed": 0,
        "lastError": "",
        "indexVersion": "0",  # proto3 JSON: a uint64 as a string
        "failedDocuments": [],
    }
    path, caller = app.calls[-1]
    assert path == "/ragmesh.v1.QueryService/GetIngestJob"
    assert caller.endswith("/ns/istio-system/sa/istio-ingressgateway-service-account")
