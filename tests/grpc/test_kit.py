"""The service kit over real gRPC: health lifecycle, reflection, metrics for unary and
streaming handlers, the concurrency cap, request-id/deadline propagation and retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ragmesh.kit.channels import open_channel
from ragmesh.kit.errors import DependencyUnavailable, InvalidArgument
from ragmesh.kit.server import NOT_SERVING, SERVING, ServiceHost, ServiceSpec
from ragmesh.v1 import (
    common_pb2,
)
from ragmesh.v1 import (
    embedding_service_pb2 as epb,
)
from ragmesh.v1 import (
    embedding_service_pb2_grpc as epb_grpc,
)
from ragmesh.v1 import (
    generation_service_pb2 as gpb,
)
from ragmesh.v1 import (
    generation_service_pb2_grpc as gpb_grpc,
)
from tests.conftest import sample, scrape, settings_for, start

GEN = "ragmesh.v1.GenerationService"
EMB = "ragmesh.v1.EmbeddingService"
Ctx = grpc.aio.ServicerContext[Any, Any]


class FakeEmbedding(epb_grpc.EmbeddingServiceServicer):
    """Records what it received; fails the first ``failures`` calls with UNAVAILABLE."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.seen: list[tuple[dict[str, str], float | None]] = []

    async def Embed(self, request: epb.EmbedRequest, context: Ctx) -> epb.EmbedResponse:
        self.calls += 1
        self.seen.append(
            ({k: v for k, v in context.invocation_metadata() or ()}, context.time_remaining())
        )
        if self.calls <= self.failures:
            raise DependencyUnavailable("model backend restarting")
        return epb.EmbedResponse(
            embeddings=common_pb2.VectorBatch(count=0, dimension=4), model="fake"
        )


class FakeGeneration(gpb_grpc.GenerationServiceServicer):
    """Streams the question's words.

    'fail' fails after one delta, 'block' waits for ``release``, 'call' calls embedding (at
    ``embed_target``), 'relay' streams a Generate from the generation at ``embed_target``.
    """

    def __init__(self, embed_target: str = "") -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.channel = open_channel(embed_target, default_timeout=3) if embed_target else None
        self.seen: list[tuple[dict[str, str], float | None]] = []

    async def Generate(
        self, request: gpb.GenerateRequest, context: Ctx
    ) -> AsyncIterator[gpb.GenerateResponse]:
        self.calls += 1
        self.seen.append(
            ({k: v for k, v in context.invocation_metadata() or ()}, context.time_remaining())
        )
        if request.question == "unavailable":
            raise DependencyUnavailable("engine down")
        if request.question == "call" and self.channel is not None:
            await epb_grpc.EmbeddingServiceStub(self.channel).Embed(epb.EmbedRequest(texts=["x"]))
        if request.question == "relay" and self.channel is not None:
            stream = gpb_grpc.GenerationServiceStub(self.channel).Generate(
                gpb.GenerateRequest(question="relayed words")
            )
            async for reply in stream:
                yield reply
            return
        for word in request.question.split():
            if word == "fail":
                raise InvalidArgument("question", "contains 'fail'")
            if word == "block":
                await self.release.wait()
            yield gpb.GenerateResponse(delta=word)
        yield gpb.GenerateResponse(
            done=gpb.GenerateDone(finish_reason=common_pb2.FINISH_REASON_STOP)
        )


def spec(servicer: Any, name: str, load: Any = None) -> ServiceSpec:
    def register(server: grpc.aio.Server) -> None:
        if name == GEN:
            gpb_grpc.add_GenerationServiceServicer_to_server(servicer, server)
        else:
            epb_grpc.add_EmbeddingServiceServicer_to_server(servicer, server)

    async def noop() -> None:
        return None

    return ServiceSpec(name="fake", service_names=(name,), register=register, load=load or noop)


async def check(channel: grpc.aio.Channel, service: str) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(resp.status)


async def test_health_not_serving_until_loaded_then_serving_then_not_serving_while_draining() -> (
    None
):
    loaded = asyncio.Event()

    async def load() -> None:
        await loaded.wait()

    settings = settings_for(RAGMESH_DRAIN_SECONDS="2")
    host = ServiceHost(settings.server, spec(FakeGeneration(), GEN, load))
    await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    loading = asyncio.create_task(host.load())
    for name in ("", GEN):
        assert await check(channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
    loaded.set()
    await loading
    for name in ("", GEN):
        assert await check(channel, name) == health_pb2.HealthCheckResponse.SERVING

    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=GEN))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(host.drain_and_stop())
    assert (
        await asyncio.wait_for(watch.read(), 5)
    ).status == health_pb2.HealthCheckResponse.NOT_SERVING
    # still draining: the server answers, and calls still work, but health says NOT_SERVING
    assert await check(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    stream = gpb_grpc.GenerationServiceStub(channel).Generate(
        gpb.GenerateRequest(question="a b"), timeout=5
    )
    assert [m.delta async for m in stream][:2] == ["a", "b"]
    watch.cancel()
    await stopping
    await channel.close()


async def test_reflection_lists_the_services(stop_hosts: list[ServiceHost]) -> None:
    host = await start(settings_for(), spec(FakeGeneration(), GEN))
    stop_hosts.append(host)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    # what `grpcurl list` does: a ServerReflectionInfo stream with list_services
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert {GEN, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    # and the file descriptor of the service resolves, so grpcurl can describe and call it
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=GEN))
    reply = await call.read()
    await call.done_writing()
    assert reply.file_descriptor_response.file_descriptor_proto
    await channel.close()


async def test_metrics_count_stream_and_unary_calls_under_their_codes(
    stop_hosts: list[ServiceHost],
) -> None:
    host = await start(settings_for(), spec(FakeGeneration(), GEN))
    stop_hosts.append(host)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    stub = gpb_grpc.GenerationServiceStub(channel)
    labels = {"grpc_service": GEN, "grpc_method": "Generate", "grpc_type": "server_stream"}
    text = scrape(host.metrics_port)
    before = {
        c: sample(text, "grpc_server_handled_total", {**labels, "grpc_code": c})
        for c in ("OK", "INVALID_ARGUMENT", "UNAVAILABLE")
    }
    started = sample(text, "grpc_server_started_total", labels)
    count = sample(text, "grpc_server_handling_seconds_count", labels)

    assert (
        len([m async for m in stub.Generate(gpb.GenerateRequest(question="x y"), timeout=5)]) == 3
    )
    call = stub.Generate(gpb.GenerateRequest(question="ok fail"), timeout=5)
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for m in call:
            got.append(m.delta)
    assert got == ["ok"] and e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "question: contains 'fail'"
    with pytest.raises(grpc.aio.AioRpcError) as e2:
        async for _ in stub.Generate(gpb.GenerateRequest(question="unavailable"), timeout=5):
            pass
    assert e2.value.code() is grpc.StatusCode.UNAVAILABLE

    text = scrape(host.metrics_port)
    for code in before:
        assert (
            sample(text, "grpc_server_handled_total", {**labels, "grpc_code": code})
            == before[code] + 1
        )
    assert sample(text, "grpc_server_started_total", labels) == started + 3
    assert sample(text, "grpc_server_handling_seconds_count", labels) == count + 3
    await channel.close()


async def test_concurrency_cap_gives_resource_exhausted_but_health_answers(
    stop_hosts: list[ServiceHost],
) -> None:
    gen = FakeGeneration()
    host = await start(settings_for(RAGMESH_MAX_CONCURRENT_RPCS="1"), spec(gen, GEN))
    stop_hosts.append(host)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    stub = gpb_grpc.GenerationServiceStub(channel)
    blocked = stub.Generate(gpb.GenerateRequest(question="one block"), timeout=10)
    assert (await blocked.read()).delta == "one"  # the first call holds the only slot
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in stub.Generate(gpb.GenerateRequest(question="two"), timeout=5):
            pass
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await check(channel, GEN) == health_pb2.HealthCheckResponse.SERVING
    gen.release.set()
    assert (await blocked.read()).delta == "block"
    assert (await blocked.read()).HasField("done")
    assert (
        len([m async for m in stub.Generate(gpb.GenerateRequest(question="three"), timeout=5)]) == 2
    )
    await channel.close()


async def relay_chain(
    stop_hosts: list[ServiceHost],
) -> tuple[FakeGeneration, FakeGeneration, grpc.aio.Channel]:
    """A generation that relays Generate to another (what query does), and a channel to it."""
    downstream_gen = FakeGeneration()
    downstream = await start(settings_for(), spec(downstream_gen, GEN))
    relay = FakeGeneration(embed_target=f"127.0.0.1:{downstream.port}")
    upstream = await start(settings_for(), spec(relay, GEN))
    stop_hosts.extend([upstream, downstream])
    return downstream_gen, relay, grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}")


async def test_request_id_and_deadline_reach_downstream_streams(
    stop_hosts: list[ServiceHost],
) -> None:
    """A server-streaming outbound call (query → Generate) carries them too."""
    downstream_gen, relay, channel = await relay_chain(stop_hosts)
    stub = gpb_grpc.GenerationServiceStub(channel)
    md = (("x-request-id", "req-43"), ("traceparent", "00-" + "c" * 32 + "-" + "d" * 16 + "-01"))
    replies = [
        r
        async for r in stub.Generate(
            gpb.GenerateRequest(question="relay"), timeout=1.5, metadata=md
        )
    ]
    assert [r.delta for r in replies[:2]] == ["relayed", "words"]
    headers, remaining = downstream_gen.seen[-1]
    assert headers["x-request-id"] == "req-43"
    assert headers["traceparent"].startswith("00-cccc")
    assert remaining is not None and remaining <= 1.6  # the caller's deadline, not 3 s
    assert relay.channel is not None
    await relay.channel.close()
    await channel.close()


async def test_the_canary_routing_header_reaches_generation_and_nothing_else_steers(
    stop_hosts: list[ServiceHost],
) -> None:
    """What query does with a user's Ask: the A/B header of the generation canary goes on
    to the Generate call (so the mesh routes it to the canary); other headers do not."""
    downstream_gen, relay, channel = await relay_chain(stop_hosts)
    stub = gpb_grpc.GenerationServiceStub(channel)
    for value, forwarded in (("true", True), ("false", True), ("yes-please", False)):
        md = (("x-ragmesh-canary", value), ("x-ragmesh-route", "canary"), ("x-version", "v2"))
        request = gpb.GenerateRequest(question="relay")
        [_ async for _ in stub.Generate(request, timeout=5, metadata=md)]
        headers, _ = downstream_gen.seen[-1]
        assert headers.get("x-ragmesh-canary") == (value if forwarded else None)
        assert "x-ragmesh-route" not in headers and "x-version" not in headers
    assert relay.channel is not None
    await relay.channel.close()
    await channel.close()


async def test_request_id_and_deadline_reach_downstream_calls(
    stop_hosts: list[ServiceHost],
) -> None:
    emb = FakeEmbedding()
    downstream = await start(settings_for(), spec(emb, EMB))
    gen = FakeGeneration(embed_target=f"127.0.0.1:{downstream.port}")
    upstream = await start(settings_for(), spec(gen, GEN))
    stop_hosts.extend([upstream, downstream])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}")
    stub = gpb_grpc.GenerationServiceStub(channel)
    md = (
        ("x-request-id", "req-42"),
        ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
        ("x-b3-sampled", "1"),
    )
    [_ async for _ in stub.Generate(gpb.GenerateRequest(question="call"), timeout=1.5, metadata=md)]
    headers, remaining = emb.seen[-1]
    assert headers["x-request-id"] == "req-42"
    assert headers["traceparent"].startswith("00-aaaa") and headers["x-b3-sampled"] == "1"
    # Capped by the caller's deadline, not the 3 s default. The server's view of the
    # deadline can run a few ms over the client's timeout (clock reads on both sides).
    assert remaining is not None and remaining <= 1.6
    # without an inbound request id one is made up and still forwarded
    [_ async for _ in stub.Generate(gpb.GenerateRequest(question="call"), timeout=5)]
    headers, remaining = emb.seen[-1]
    assert len(headers["x-request-id"]) == 32
    assert remaining is not None and 2.0 < remaining <= 3.1  # the channel's 3 s default applies
    assert gen.channel is not None
    await gen.channel.close()
    await channel.close()


async def test_idempotent_calls_are_retried_and_generate_is_not(
    stop_hosts: list[ServiceHost],
) -> None:
    emb = FakeEmbedding(failures=1)
    gen = FakeGeneration()
    a = await start(settings_for(), spec(emb, EMB))
    b = await start(settings_for(), spec(gen, GEN))
    stop_hosts.extend([a, b])
    ch_a = open_channel(f"127.0.0.1:{a.port}", default_timeout=5)
    resp = await epb_grpc.EmbeddingServiceStub(ch_a).Embed(epb.EmbedRequest(texts=["x"]))
    assert resp.model == "fake" and emb.calls == 2  # UNAVAILABLE once, retried once
    ch_b = open_channel(f"127.0.0.1:{b.port}", default_timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in gpb_grpc.GenerationServiceStub(ch_b).Generate(
            gpb.GenerateRequest(question="unavailable")
        ):
            pass
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE and gen.calls == 1
    await ch_a.close()
    await ch_b.close()


async def test_engine_health_drives_grpc_health(stop_hosts: list[ServiceHost]) -> None:
    """An engine that turns unhealthy (or whose check fails, e.g. a model server that is
    unreachable) makes the service NOT_SERVING within a few intervals, SERVING once back."""
    state: dict[str, object] = {"ok": True}

    async def engine_health() -> bool:
        if isinstance(state["ok"], Exception):
            raise state["ok"]
        return bool(state["ok"])

    host_spec = spec(FakeEmbedding(), EMB)
    host_spec.health = engine_health
    host = await start(settings_for(RAGMESH_HEALTH_INTERVAL_SECONDS="0.05"), host_spec)
    stop_hosts.append(host)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")

    async def becomes(status: int) -> None:
        for _ in range(100):  # bounded: 2 s
            if await check(channel, "") == status and await check(channel, EMB) == status:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"health did not become {status}")

    await becomes(SERVING)
    for broken in (False, ConnectionError("model server unreachable")):
        state["ok"] = broken
        await becomes(NOT_SERVING)
        state["ok"] = True
        await becomes(SERVING)
    await channel.close()
