"""Retries, no-retry, long streams and deadlines, as the Canary service blocks configure
them, through query's real sidecar and the upstream's real sidecar."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from ragmesh.kit import config
from ragmesh.kit.channels import open_channel
from tests.mesh.conftest import FakeMesh
from tests.support.fakeapp import fail, hang, slow_stream

pytestmark = pytest.mark.slow
SEARCH = "/ragmesh.v1.RetrievalService/Search"
GENERATE = "/ragmesh.v1.GenerationService/Generate"
ASK = "/ragmesh.v1.QueryService/Ask"
ENVOY_DEFAULT_ROUTE_TIMEOUT_S = 15.0


def cluster_stat(mesh: FakeMesh, upstream: str, stat: str) -> int:
    name = f"cluster.outbound|50051||{upstream}.rag-prod.svc.cluster.local.{stat}"
    return mesh.sidecars["query"].stats()[name]


async def test_search_is_retried_through_unavailable(fake_mesh: FakeMesh) -> None:
    app = fake_mesh.apps["retrieval"]
    app.calls.clear()
    app.script[SEARCH].extend([fail(grpc.StatusCode.UNAVAILABLE)] * 2)
    retries = cluster_stat(fake_mesh, "retrieval", "upstream_rq_retry")
    # a plain channel: no client-side retry policy, so any retry is the mesh's
    async with fake_mesh.channel(fake_mesh.sidecars["query"], "retrieval") as channel:
        await channel.unary_unary(SEARCH)(b"", timeout=10)
    assert app.count(SEARCH) == 3
    assert cluster_stat(fake_mesh, "retrieval", "upstream_rq_retry") - retries == 2


async def test_generate_is_never_retried(fake_mesh: FakeMesh) -> None:
    app = fake_mesh.apps["generation"]
    app.calls.clear()
    app.script[GENERATE].append(fail(grpc.StatusCode.UNAVAILABLE))
    async with fake_mesh.channel(fake_mesh.sidecars["query"], "generation") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in channel.unary_stream(GENERATE)(b"", timeout=10):
                pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app.count(GENERATE) == 1
    assert cluster_stat(fake_mesh, "generation", "upstream_rq_retry") == 0
    # the next call is served normally: the single failure did not eject the only host
    async with fake_mesh.channel(fake_mesh.sidecars["query"], "generation") as channel:
        assert [m async for m in channel.unary_stream(GENERATE)(b"", timeout=10)] == []


async def test_long_stream_is_not_cut(fake_mesh: FakeMesh) -> None:
    """Generate (query → generation) and Ask (ingress → query) streams of 16.5 s: longer
    than Envoy's default 15 s route timeout; every message arrives and the status is OK."""
    messages, interval = 11, 1.5
    assert messages * interval > ENVOY_DEFAULT_ROUTE_TIMEOUT_S
    fake_mesh.apps["generation"].script[GENERATE].append(slow_stream(messages, interval))
    fake_mesh.apps["query"].script[ASK].append(slow_stream(messages, interval))
    ingress = fake_mesh.lab.sidecars.get("istio-ingressgateway") or fake_mesh.lab.start_ingress()

    bearer = (("authorization", f"Bearer {fake_mesh.lab.token()}"),)  # the ingress wants one

    async def stream(channel: grpc.aio.Channel, path: str) -> tuple[int, float]:
        start = time.monotonic()
        call = channel.unary_stream(path)(b"", timeout=60, metadata=bearer)
        received = [m async for m in call]
        return len(received), time.monotonic() - start

    async with (
        fake_mesh.channel(fake_mesh.sidecars["query"], "generation") as to_generation,
        fake_mesh.channel(ingress, "query") as to_query,
    ):
        (gen_n, gen_s), (ask_n, ask_s) = await asyncio.gather(
            stream(to_generation, GENERATE), stream(to_query, ASK)
        )
    assert gen_n == ask_n == messages
    assert min(gen_s, ask_s) > ENVOY_DEFAULT_ROUTE_TIMEOUT_S


async def test_hung_search_hits_the_callers_deadline(fake_mesh: FakeMesh) -> None:
    """query's own channel (deadline RAGMESH_CALL_TIMEOUT_SECONDS) through its sidecar."""
    settings = config.load({"RAGMESH_CALL_TIMEOUT_SECONDS": "1.5"})
    timeout = settings.peers.call_timeout
    app = fake_mesh.apps["retrieval"]
    app.calls.clear()
    app.script[SEARCH].append(hang)
    target = f"127.0.0.1:{fake_mesh.sidecars['query'].outbound['retrieval']}"
    channel = open_channel(target, default_timeout=timeout)
    try:
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(SEARCH)(b"")
        elapsed = time.monotonic() - start
    finally:
        await channel.close()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # grpc's timer may fire a fraction of a millisecond before time.monotonic() agrees
    assert timeout - 0.01 <= elapsed < timeout + 0.5
    assert app.count(SEARCH) == 1  # the per-try timeout (2 s) is longer than the deadline
