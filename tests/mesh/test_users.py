"""End users at the ingress gateway, on real Envoy: mesh/authentication.yaml's
RequestAuthentication and DENY rule, translated by the local mesh with its local issuer.
A valid token passes; expired, not yet valid, wrong issuer, wrong audience, tampered and
unknown-key tokens are UNAUTHENTICATED (HTTP 401), and so is no token at all (with
WWW-Authenticate; Istio alone answers 403 to it, and to another audience); a token without a
tenant is PERMISSION_DENIED (403).
Each method needs its scope (ask, ingest, delete). The verified claims reach query as
headers the gateway writes: a client's forged copy never does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import grpc
import pytest

from ragmesh_lab.meshlab.issuer import b64url
from ragmesh_lab.meshlab.lab import Sidecar
from tests.mesh.conftest import FakeMesh
from tests.support import rest

pytestmark = pytest.mark.slow
ASK = "/ragmesh.v1.QueryService/Ask"
HEALTH = "/grpc.health.v1.Health/Check"


def ingress(mesh: FakeMesh) -> Sidecar:
    return mesh.lab.sidecars.get("istio-ingressgateway") or mesh.lab.start_ingress()


async def ask(
    mesh: FakeMesh, token: str | None, extra: Sequence[tuple[str, str]] = ()
) -> tuple[grpc.StatusCode, str]:
    metadata = [*extra] + ([("authorization", f"Bearer {token}")] if token else [])
    async with mesh.channel(ingress(mesh), "query") as channel:
        try:
            async for _ in channel.unary_stream(ASK)(b"", timeout=10, metadata=metadata):
                pass
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def ingress_rest(mesh: FakeMesh) -> str:
    ingress(mesh)
    return mesh.lab.rest_url


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(__import__("base64").urlsafe_b64decode(payload + "=="))
    claims["tenant"] = "someone-else"
    return ".".join((header, b64url(json.dumps(claims).encode()), signature))


async def test_a_valid_token_passes_and_its_claims_reach_query(fake_mesh: FakeMesh) -> None:
    app = fake_mesh.apps["query"]
    app.calls.clear()
    app.metadata.clear()
    token = fake_mesh.lab.token("acme", ("ask",), subject="alice")
    assert (await ask(fake_mesh, token))[0] == grpc.StatusCode.OK
    seen = dict(app.metadata[-1])
    assert (seen["x-ragmesh-tenant"], seen["x-ragmesh-subject"]) == ("acme", "alice")
    assert "authorization" not in seen  # the token itself is never forwarded


@pytest.mark.parametrize(
    "case",
    ["expired", "not yet valid", "wrong issuer", "wrong audience", "tampered", "unknown key"],
)
async def test_a_bad_token_is_unauthenticated(fake_mesh: FakeMesh, case: str) -> None:
    lab = fake_mesh.lab
    app = fake_mesh.apps["query"]
    before = len(app.calls)
    token = {
        "expired": lambda: lab.token(ttl=-600),  # beyond the 60 s clock skew allowed
        "not yet valid": lambda: lab.token(not_before=__import__("time").time() + 600),
        "wrong issuer": lambda: lab.issuer.mint(
            issuer="https://evil.example.com",
            audience="ragmesh",
            subject="x",
            tenant="t",
            scopes=["ask"],
        ),
        "wrong audience": lambda: lab.issuer.mint(
            issuer=lab.policy.gateway_jwt[0].issuer,
            audience="other",
            subject="x",
            tenant="t",
            scopes=["ask"],
        ),
        "tampered": lambda: tampered(lab.token()),
        "unknown key": lambda: lab.token(kid="not-a-key-of-the-jwks"),
    }[case]()
    code, details = await ask(fake_mesh, token)
    assert code == grpc.StatusCode.UNAUTHENTICATED, (case, code, details)
    if case == "wrong audience":  # Envoy's jwt_authn says 403; the gateway's local reply 401
        assert details == "Audiences in Jwt are not allowed"
    assert len(app.calls) == before  # nothing reached query


async def test_no_token_is_unauthenticated(fake_mesh: FakeMesh) -> None:
    """Istio denies a request without a principal with 403; the gateway's local reply
    (mesh/authentication.yaml) makes a request that sent no token at all a 401 with
    WWW-Authenticate, over gRPC (UNAUTHENTICATED) and REST alike."""
    app = fake_mesh.apps["query"]
    before = len(app.calls)
    async with fake_mesh.channel(ingress(fake_mesh), "query") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            async for _ in channel.unary_stream(ASK)(
                b"", timeout=10, metadata=[("x-ragmesh-tenant", "acme")]
            ):
                pass
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (e.value.details() or "").startswith("Jwt is missing")
    seen = {**dict(e.value.initial_metadata() or ()), **dict(e.value.trailing_metadata() or ())}
    assert seen["www-authenticate"] == 'Bearer realm="ragmesh"'
    status, headers, error = await asyncio.to_thread(
        rest.call, f"{ingress_rest(fake_mesh)}/v1/ask", {"question": "q"}
    )
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="ragmesh"', error
    assert len(app.calls) == before
    # health is outside the rule; the edge routes only QueryService (404: UNIMPLEMENTED)
    async with fake_mesh.channel(ingress(fake_mesh), "query") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await channel.unary_unary(HEALTH)(b"", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_forged_tenant_header_never_reaches_query(fake_mesh: FakeMesh) -> None:
    app = fake_mesh.apps["query"]
    app.metadata.clear()
    token = fake_mesh.lab.token("acme")
    forged = [("x-ragmesh-tenant", "globex"), ("x-ragmesh-subject", "root")]
    assert (await ask(fake_mesh, token, forged))[0] == grpc.StatusCode.OK
    seen = [kv for kv in app.metadata[-1] if kv[0] in ("x-ragmesh-tenant", "x-ragmesh-subject")]
    assert sorted(seen) == [("x-ragmesh-subject", "developer"), ("x-ragmesh-tenant", "acme")]


async def test_a_token_without_a_tenant_is_denied(fake_mesh: FakeMesh) -> None:
    """The gateway writes x-ragmesh-tenant from the token's claim; without the claim a
    client's own copy would pass through, so such a token is refused before query."""
    app = fake_mesh.apps["query"]
    before = len(app.calls)
    token = fake_mesh.lab.token(None, ("ask",))
    code, details = await ask(fake_mesh, token, [("x-ragmesh-tenant", "acme")])
    assert code == grpc.StatusCode.PERMISSION_DENIED and "RBAC" in details
    code, _ = await ask(fake_mesh, fake_mesh.lab.token("", ("ask",)))  # an empty one neither
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert len(app.calls) == before


INGEST = "/ragmesh.v1.QueryService/Ingest"
JOB = "/ragmesh.v1.QueryService/GetIngestJob"
DELETE = "/ragmesh.v1.QueryService/DeleteDocument"
LIST_JOBS = "/ragmesh.v1.QueryService/ListIngestJobs"
RETRY_JOB = "/ragmesh.v1.QueryService/RetryIngestJob"


async def unary(mesh: FakeMesh, path: str, token: str) -> grpc.StatusCode:
    async with mesh.channel(ingress(mesh), "query") as channel:
        try:
            metadata = (("authorization", f"Bearer {token}"),)
            await channel.unary_unary(path)(b"", timeout=10, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


OK, DENIED = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("scopes", "ask_code", "ingest_code", "delete_code"),
    [
        (("ask",), OK, DENIED, DENIED),
        (("ingest",), DENIED, OK, DENIED),
        (("delete",), DENIED, DENIED, OK),
        (("ask", "ingest", "delete"), OK, OK, OK),
        ((), DENIED, DENIED, DENIED),
    ],
)
async def test_a_token_needs_the_scope_of_what_it_asks_for(
    fake_mesh: FakeMesh,
    scopes: tuple[str, ...],
    ask_code: grpc.StatusCode,
    ingest_code: grpc.StatusCode,
    delete_code: grpc.StatusCode,
) -> None:
    token = fake_mesh.lab.token("acme", scopes)
    assert (await ask(fake_mesh, token))[0] == ask_code
    assert await unary(fake_mesh, INGEST, token) == ingest_code
    assert await unary(fake_mesh, JOB, token) == ingest_code  # reading one's ingest jobs
    assert await unary(fake_mesh, LIST_JOBS, token) == ingest_code  # listing them
    assert await unary(fake_mesh, RETRY_JOB, token) == ingest_code  # and retrying one
    assert await unary(fake_mesh, DELETE, token) == delete_code


async def test_scopes_hold_over_the_rest_bridge_too(fake_mesh: FakeMesh) -> None:
    if "istio-ingressgateway" not in fake_mesh.lab.sidecars:
        fake_mesh.lab.start_ingress()
    url = fake_mesh.lab.rest_url
    body = {"documents": [{"documentId": "d", "text": "t"}]}
    ask_only = fake_mesh.lab.token("acme", ("ask",))
    status, _, error = await asyncio.to_thread(
        rest.call, f"{url}/v1/documents:ingest", body, token=ask_only
    )
    assert status == 403 and "RBAC" in str(error)
    for path in (f"/v1/ingest-jobs/{'a' * 32}", "/v1/ingest-jobs"):
        status, _, _ = await asyncio.to_thread(rest.call, f"{url}{path}", token=ask_only)
        assert status == 403, path
    status, _, _ = await asyncio.to_thread(
        rest.call, f"{url}/v1/ingest-jobs", token=fake_mesh.lab.token("acme", ("ingest",))
    )
    assert status == 200
    status, _, _ = await asyncio.to_thread(
        rest.call,
        f"{url}/v1/documents:ingest",
        body,
        token=fake_mesh.lab.token("acme", ("ingest",)),
    )
    assert status == 200
    for scopes, expected in ((("ask", "ingest"), 403), (("delete",), 200)):
        status, _, _ = await asyncio.to_thread(
            rest.call,
            f"{url}/v1/documents/d",
            method="DELETE",
            token=fake_mesh.lab.token("acme", scopes),
        )
        assert status == expected, scopes


async def burst(mesh: FakeMesh, token: str, n: int) -> list[tuple[grpc.StatusCode, dict[str, str]]]:
    """``n`` unary Ingest calls at once; each one's code and response metadata."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with mesh.channel(ingress(mesh), "query") as channel:
        method = channel.unary_unary(INGEST)

        async def one() -> tuple[grpc.StatusCode, dict[str, str]]:
            call = method(b"", timeout=10, metadata=metadata)
            try:
                await call
            except grpc.aio.AioRpcError as e:
                seen = {**dict(e.initial_metadata() or ()), **dict(e.trailing_metadata() or ())}
                return e.code(), {k: str(v) for k, v in seen.items()}
            return grpc.StatusCode.OK, {}

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_a_client_over_its_rate_is_refused_at_the_gateway_with_a_retry_hint(
    fake_mesh: FakeMesh,
) -> None:
    """mesh/rate-limit.yaml: a bucket of 40 per client (tenant and subject), 20 a second."""
    app = fake_mesh.apps["query"]
    before = len(app.calls)
    alice = fake_mesh.lab.token("acme", ("ingest",), subject="alice")
    results = await burst(fake_mesh, alice, 120)
    limited = [meta for code, meta in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    passed = [code for code, _ in results if code == grpc.StatusCode.OK]
    assert len(limited) + len(passed) == 120 and 40 <= len(passed) < 60, len(passed)
    assert len(app.calls) - before == len(passed)  # the refused never reached query
    hint = limited[0]
    assert hint["retry-after"] == "1" and hint["x-ratelimit-limit"].startswith("40")
    assert hint["x-ratelimit-remaining"] == "0"
    # another client of the same tenant has its own bucket
    bob = fake_mesh.lab.token("acme", ("ingest",), subject="bob")
    assert {code for code, _ in await burst(fake_mesh, bob, 10)} == {grpc.StatusCode.OK}
    # over REST a client over its rate is answered 429
    carol = fake_mesh.lab.token("acme", ("ingest",), subject="carol")
    url = f"{fake_mesh.lab.rest_url}/v1/ingest-jobs/{'a' * 32}"

    def rest_burst() -> list[tuple[int, dict[str, str]]]:
        return [rest.call(url, token=carol)[:2] for _ in range(80)]

    answers = await asyncio.to_thread(rest_burst)
    refused = [headers for status, headers in answers if status == 429]
    assert refused and refused[0]["retry-after"] == "1"
    assert {status for status, _ in answers} == {200, 429}
