"""mTLS and authorization through real Envoy sidecars, for the full identity × method space."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from ragmesh_lab.meshlab.ca import LocalCA
from ragmesh_lab.meshlab.manifests import GRPC_PORT, spiffe
from tests.mesh.conftest import FakeMesh
from tests.support.contract import api_paths, grpc_pairs, matrix_contract
from tests.support.fakeapp import STREAMING

pytestmark = pytest.mark.slow
EMBED = "/ragmesh.v1.EmbeddingService/Embed"
QUERY = "cluster.local/ns/rag-prod/sa/ragmesh-query"


DETAILS: dict[str, str] = {}


async def call(
    channel: grpc.aio.Channel, path: str, timeout: float = 10.0, token: str = ""
) -> grpc.StatusCode:
    """Call ``path`` with an empty message; the status it ends with."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        if path in STREAMING:
            async for _ in channel.unary_stream(path)(b"", timeout=timeout, metadata=metadata):
                pass
        else:
            await channel.unary_unary(path)(b"", timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as e:
        DETAILS[e.code().name] = e.details() or ""
        return e.code()
    return grpc.StatusCode.OK


async def test_plaintext_client_is_rejected(fake_mesh: FakeMesh) -> None:
    inbound = fake_mesh.sidecars["embedding"].inbound[GRPC_PORT]
    before = len(fake_mesh.apps["embedding"].calls)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inbound}") as channel:
        assert await call(channel, EMBED, timeout=3) == grpc.StatusCode.UNAVAILABLE
    assert len(fake_mesh.apps["embedding"].calls) == before


async def test_foreign_ca_is_rejected(fake_mesh: FakeMesh) -> None:
    # A certificate naming query's identity exactly, signed by a CA the mesh does not trust.
    foreign = LocalCA(fake_mesh.lab.stack.workdir / "foreign-ca", name="someone else's CA")
    identity = foreign.issue(spiffe(QUERY))
    impostor = fake_mesh.lab.start_sidecar(
        "impostor",
        QUERY,
        outbound={"embedding": fake_mesh.lab.outbound("embedding")},
        identity=identity,
    )
    before = len(fake_mesh.apps["embedding"].calls)
    async with fake_mesh.channel(impostor, "embedding") as channel:
        assert await call(channel, EMBED, timeout=5) == grpc.StatusCode.UNAVAILABLE
    assert len(fake_mesh.apps["embedding"].calls) == before
    # the same call with the mesh's own certificate for that identity goes through
    async with fake_mesh.channel(fake_mesh.client(QUERY), "embedding") as channel:
        assert await call(channel, EMBED) == grpc.StatusCode.OK


async def test_every_identity_and_method(fake_mesh: FakeMesh) -> None:
    """Every caller identity × workload × method: allowed exactly where the contract says."""
    pairs = grpc_pairs(fake_mesh.lab.policy, matrix_contract())
    callers = sorted({p[0] for p in pairs})
    assert len(callers) >= 10 and len(pairs) == len(callers) * 5 * 14  # 5 workloads, 14 methods
    channels: dict[tuple[str, str], grpc.aio.Channel] = {}
    for caller in callers:
        sidecar = fake_mesh.client(caller)
        for workload in fake_mesh.apps:
            channels[caller, workload] = fake_mesh.channel(sidecar, workload)
    for app in fake_mesh.apps.values():
        app.calls.clear()
    semaphore = asyncio.Semaphore(8)

    async def one(caller: str, workload: str, path: str) -> grpc.StatusCode:
        async with semaphore:
            return await call(channels[caller, workload], path)

    try:
        codes = await asyncio.gather(*(one(c, w, p) for c, w, p, _ in pairs))
    finally:
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
    wrong = [
        (caller, workload, path, code.name)
        for (caller, workload, path, allowed), code in zip(pairs, codes, strict=True)
        if code != (grpc.StatusCode.OK if allowed else grpc.StatusCode.PERMISSION_DENIED)
    ]
    if wrong:  # show what the sidecars saw, for a failure that is not an authorization verdict
        logs = fake_mesh.lab.stack.workdir / "logs"
        flagged = [
            line
            for log in sorted(logs.glob("*-envoy.log"))
            for line in log.read_text().splitlines()
            if "grpc=Unavailable" in line or " 503 " in line
        ]
        raise AssertionError(f"{wrong[:10]}\n{DETAILS}\n" + "\n".join(flagged[:20]))
    # allowed calls reached the application, with the caller's verified identity; denied
    # calls never did
    reached = {
        (app.name, path, caller) for app in fake_mesh.apps.values() for path, caller in app.calls
    }
    expected = {(w, p, spiffe(c)) for c, w, p, allowed in pairs if allowed}
    assert reached == expected
    assert sum(allowed for *_, allowed in pairs) >= 15


async def test_ingress_exposes_only_query_service(fake_mesh: FakeMesh) -> None:
    ingress = fake_mesh.lab.start_ingress()
    for app in fake_mesh.apps.values():
        app.calls.clear()
    token = fake_mesh.lab.token(scopes=("ask", "ingest", "delete"))  # test_users.py: scopes
    async with fake_mesh.channel(ingress, "query") as channel:
        for path in api_paths():
            code = await call(channel, path, token=token)
            if path.startswith("/ragmesh.v1.QueryService/"):
                assert code == grpc.StatusCode.OK, path
            else:  # no route at the edge: Envoy answers 404, which gRPC reads as UNIMPLEMENTED
                assert code == grpc.StatusCode.UNIMPLEMENTED, path
    reached = [(app.name, p) for app in fake_mesh.apps.values() for p, _ in app.calls]
    assert sorted(reached) == sorted(
        ("query", p) for p in api_paths() if p.startswith("/ragmesh.v1.QueryService/")
    )


def test_sidecar_admin_is_a_private_unix_socket_not_a_port(fake_mesh: FakeMesh) -> None:
    import json
    import stat

    from ragmesh_lab.meshlab.lab import admin_get

    sidecar = fake_mesh.sidecars["query"]
    config = json.loads(
        (fake_mesh.lab.stack.workdir / "envoy" / f"{sidecar.name}.json").read_text()
    )
    assert "socket_address" not in config["admin"]["address"]  # no TCP port to POST to
    assert stat.S_IMODE(sidecar.admin.stat().st_mode) == 0o600
    assert stat.S_IMODE(sidecar.admin.parent.stat().st_mode) == 0o700
    assert admin_get(sidecar.admin, "/ready")[1].strip() == "LIVE"
    assert sidecar.stats()  # the lab still reads counters through it
