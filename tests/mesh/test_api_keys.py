"""API keys for machine clients at the ingress gateway, on real Envoy: mesh/authentication.yaml's
CUSTOM policy, translated by the local mesh into ext_authz, asking the real keys service
(python -m ragmesh.keys) over mTLS. A valid key passes over gRPC and REST and its tenant and
subject reach query (a forged copy never does, nor the key itself); a malformed, unknown,
revoked or expired key is UNAUTHENTICATED (401); a key without the scope, and a key sent
with a token, are PERMISSION_DENIED (403); the gateway fails closed without the checker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import pytest

from ragmesh.keys.service import mint
from ragmesh_lab.meshlab.lab import Sidecar
from tests.mesh.conftest import FakeMesh
from tests.support import rest

pytestmark = pytest.mark.slow
ASK = "/ragmesh.v1.QueryService/Ask"
INGEST = "/ragmesh.v1.QueryService/Ingest"
JOB = "/ragmesh.v1.QueryService/GetIngestJob"
DELETE = "/ragmesh.v1.QueryService/DeleteDocument"
OK, DENIED = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def ingress(mesh: FakeMesh) -> Sidecar:
    return mesh.lab.sidecars.get("istio-ingressgateway") or mesh.lab.start_ingress()


def new_key(
    mesh: FakeMesh, tenant: str = "acme", scopes: Sequence[str] = ("ask",), **kw: float
) -> tuple[str, str]:
    """A key added to the local key file; (the key, its id). The checker re-reads the file
    at most once a second."""
    ingress(mesh)
    key, record = mint(tenant, scopes, "test", kw.get("expires"))
    with open(mesh.lab.keys_file, "a") as out:
        out.write(record.record() + "\n")
    time.sleep(1.1)
    return key, record.id


async def call(
    mesh: FakeMesh, path: str, metadata: Sequence[tuple[str, str]]
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """One call through the ingress (Ask streams); code, details, response metadata."""
    async with mesh.channel(ingress(mesh), "query") as channel:
        try:
            if path == ASK:
                async for _ in channel.unary_stream(path)(b"", timeout=10, metadata=metadata):
                    pass
            else:
                await channel.unary_unary(path)(b"", timeout=10, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            seen = {**dict(e.initial_metadata() or ()), **dict(e.trailing_metadata() or ())}
            return e.code(), e.details() or "", {k: str(v) for k, v in seen.items()}
    return OK, "", {}


async def test_a_valid_key_passes_and_query_gets_its_tenant_never_the_key(
    fake_mesh: FakeMesh,
) -> None:
    key, key_id = new_key(fake_mesh, "acme", ("ask",))
    app = fake_mesh.apps["query"]
    app.metadata.clear()
    forged = [("x-ragmesh-tenant", "globex"), ("x-ragmesh-subject", "root")]
    assert (answer := await call(fake_mesh, ASK, [("x-api-key", key), *forged]))[0] == OK, answer
    seen = dict(app.metadata[-1])
    assert (seen["x-ragmesh-tenant"], seen["x-ragmesh-subject"]) == ("acme", f"apikey:{key_id}")
    assert "x-api-key" not in seen and key not in str(app.metadata)
    # over REST too
    url = f"{fake_mesh.lab.rest_url}/v1/ask"
    status, _, body = await asyncio.to_thread(
        rest.call, url, {"question": "q"}, headers={"x-api-key": key, **dict(forged)}
    )
    assert status == 200, body
    seen = dict(app.metadata[-1])
    assert (seen["x-ragmesh-tenant"], seen["x-ragmesh-subject"]) == ("acme", f"apikey:{key_id}")
    assert "x-api-key" not in seen


async def test_a_bad_key_is_unauthenticated_over_grpc_and_rest(fake_mesh: FakeMesh) -> None:
    app = fake_mesh.apps["query"]
    before = len(app.calls)
    good, key_id = new_key(fake_mesh)
    expired, _ = new_key(fake_mesh, expires=time.time() - 1)
    cases = {
        "malformed": ("not-a-key", "malformed API key"),
        "unknown": ("rmk_0123456789abcdef_" + "A" * 43, "invalid API key"),
        "wrong secret": (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), "invalid"),
        "expired": (expired, "expired"),
    }
    for case, (key, message) in cases.items():
        code, details, seen = await call(fake_mesh, ASK, [("x-api-key", key)])
        assert (code, message in details) == (UNAUTHENTICATED, True), (case, details)
        assert seen["www-authenticate"] == 'ApiKey realm="ragmesh"', case
        status, headers, body = await asyncio.to_thread(
            rest.call, f"{fake_mesh.lab.rest_url}/v1/ask", {"question": "q"},
            headers={"x-api-key": key},
        )  # fmt: skip
        assert status == 401 and message in str(body), (case, body)
        assert headers["www-authenticate"] == 'ApiKey realm="ragmesh"'
    # a key and a token together: one credential or the other (the gateway's DENY rule)
    token = fake_mesh.lab.token("acme", ("ask",))
    code, details, _ = await call(
        fake_mesh, ASK, [("x-api-key", good), ("authorization", f"Bearer {token}")]
    )
    assert code == DENIED and "RBAC" in details
    code, details, _ = await call(  # and a bad token with a key is the token's 401
        fake_mesh, ASK, [("x-api-key", good), ("authorization", "Bearer x.y.z")]
    )
    assert code == UNAUTHENTICATED
    # revoked: removed from the key file
    lines = fake_mesh.lab.keys_file.read_text().splitlines()
    fake_mesh.lab.keys_file.write_text("".join(x + "\n" for x in lines if key_id not in x))
    time.sleep(1.1)
    assert (await call(fake_mesh, ASK, [("x-api-key", good)]))[0] == UNAUTHENTICATED
    assert len(app.calls) == before  # nothing reached query


@pytest.mark.parametrize(
    ("scopes", "ask_code", "ingest_code", "delete_code"),
    [
        (("ask",), OK, DENIED, DENIED),
        (("ingest",), DENIED, OK, DENIED),
        (("delete",), DENIED, DENIED, OK),
        (("ask", "ingest", "delete"), OK, OK, OK),
    ],
)
async def test_a_key_needs_the_scope_of_what_it_asks_for(
    fake_mesh: FakeMesh,
    scopes: tuple[str, ...],
    ask_code: grpc.StatusCode,
    ingest_code: grpc.StatusCode,
    delete_code: grpc.StatusCode,
) -> None:
    key, key_id = new_key(fake_mesh, "acme", scopes)
    metadata = [("x-api-key", key)]
    assert (await call(fake_mesh, ASK, metadata))[0] == ask_code
    assert (await call(fake_mesh, INGEST, metadata))[0] == ingest_code
    assert (await call(fake_mesh, JOB, metadata))[0] == ingest_code
    code, details, _ = await call(fake_mesh, DELETE, metadata)
    assert code == delete_code
    if code == DENIED:  # the checker's own answer, not rewritten into a token's 401
        assert details == f"API key {key_id} lacks the scope 'delete'"
    url = fake_mesh.lab.rest_url
    status, _, body = await asyncio.to_thread(
        rest.call, f"{url}/v1/documents/d", method="DELETE", headers={"x-api-key": key}
    )
    assert status == (200 if delete_code == OK else 403), body
    status, _, body = await asyncio.to_thread(
        rest.call, f"{url}/v1/documents:ingest", {"documents": []}, headers={"x-api-key": key}
    )
    assert status == (200 if ingest_code == OK else 403), body


async def test_without_the_checker_a_key_is_refused_not_waved_through(
    fake_mesh: FakeMesh,
) -> None:
    """Fail closed (failOpen: false): a key request while the checker is down is UNAVAILABLE
    (statusOnError 503), and a token request is untouched."""
    key, _ = new_key(fake_mesh)
    app = fake_mesh.apps["query"]
    before = len(app.calls)
    keys = fake_mesh.lab.stack.procs["keys"]
    keys.popen.terminate()
    keys.popen.wait(10)
    code, _, _ = await call(fake_mesh, ASK, [("x-api-key", key)])
    assert code == grpc.StatusCode.UNAVAILABLE
    assert len(app.calls) == before
    token = fake_mesh.lab.token("acme", ("ask",))
    assert (await call(fake_mesh, ASK, [("authorization", f"Bearer {token}")]))[0] == OK
