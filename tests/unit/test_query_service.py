"""The Ask pipeline with fake peers: stream shape, caches, Redis failures, validation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from ragmesh.kit.domain import (
    ChunkRecord,
    Delta,
    Done,
    Embedded,
    Finish,
    Hit,
    Params,
    Purpose,
    SearchResult,
)
from ragmesh.kit.errors import InvalidArgument
from ragmesh.query.cache import RedisCache
from ragmesh.query.service import AskDone, AskInput, AskPipeline, Citations
from tests.conftest import settings_for


class Peers:
    def __init__(self) -> None:
        self.embeds = 0
        self.searches = 0
        self.generations = 0
        self.question_vectors: list[Embedded | None] = []  # what each generation was given
        self.version = 7
        self.tenants: list[str] = []  # the tenant of each search
        self.min_versions: list[int] = []  # the min_index_version of each search
        self.models: list[str] = []  # the embedding model each search names
        self.texts: list[str] = []  # the query text each search carries (hybrid search)
        self.best = 1.0  # the similarity of the best hit
        self.words = ("It is so,", " as the default text says", " [1].")  # what generation says

    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Embedded:
        self.embeds += 1
        return Embedded(np.ones((len(texts), 4), dtype=np.float32), "mini")

    async def search(
        self,
        tenant: str,
        vector: object,
        top_k: int,
        filter: Mapping[str, str],
        min_index_version: int = 0,
        model: str = "",
        text: str = "",
    ) -> SearchResult:
        self.searches += 1
        self.texts.append(text)
        self.tenants.append(tenant)
        self.min_versions.append(min_index_version)
        self.models.append(model)
        hits = tuple(
            Hit(
                f"d{i}#0",
                f"d{i}",
                f"{tenant} text {i}: the default text says so",
                self.best - i / 10,
            )
            for i in range(top_k)
        )
        return SearchResult(hits, self.version)

    async def upsert(self, tenant: str, chunks: Sequence[ChunkRecord], model: str = "") -> int:
        return self.version

    async def delete(
        self, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> tuple[int, int]:
        return 0, self.version

    async def generate(
        self,
        question: str,
        passages: Sequence[Hit],
        params: Params,
        question_vector: Embedded | None = None,
    ) -> AsyncIterator[Delta | Done]:
        self.generations += 1
        self.question_vectors.append(question_vector)
        for word in self.words:
            yield Delta(word)
        yield Done(Finish.STOP, 50, 4, "gen-model")


class MemoryRedis:
    """The two redis.asyncio calls the cache makes, in memory; ``down`` makes them fail."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    async def get(self, key: str) -> bytes | None:
        if self.down:
            raise RedisConnectionError("connection refused")
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ex: int) -> None:
        if self.down:
            raise RedisConnectionError("connection refused")
        self.data[key] = value


def pipeline(redis: MemoryRedis, peers: Peers) -> AskPipeline:
    cache = RedisCache(redis, retry_after=0.0)  # type: ignore[arg-type]
    return AskPipeline(settings_for().query, peers, peers, peers, cache)


async def run(p: AskPipeline, question: str = "What is it?", **kw: object) -> list[object]:
    return [e async for e in p.ask(AskInput(question, **kw))]  # type: ignore[arg-type]


async def test_stream_shape_and_answer_cache_replay() -> None:
    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)
    first = await run(p, top_k=3)
    assert isinstance(first[0], Citations) and isinstance(first[-1], AskDone)
    assert [c.marker for c in first[0].citations] == [1, 2, 3]
    assert "".join(e.text for e in first[1:-1]) == "It is so, as the default text says [1]."  # type: ignore[attr-defined]
    assert not first[-1].cache_hit and first[-1].index_version == 7
    again = await run(p, "  what IS it? ", top_k=3)
    assert again[-1].cache_hit  # type: ignore[attr-defined]
    assert again[:-1] == first[:-1]
    assert peers.generations == 1
    peers.version = 8  # new documents: the cached answer no longer applies
    assert not (await run(p, top_k=3))[-1].cache_hit  # type: ignore[attr-defined]
    assert not (await run(p, top_k=3, skip_cache=True))[-1].cache_hit  # type: ignore[attr-defined]


async def test_generation_gets_the_question_embedding_already_made() -> None:
    """The question is embedded once per Ask: generation is handed the vector (and the
    model that made it) instead of encoding the question again; from the embedding cache
    too."""
    peers = Peers()
    p = pipeline(MemoryRedis(), peers)
    await run(p, skip_cache=True)
    await run(p, skip_cache=True)  # the vector now comes from the embedding cache
    assert peers.embeds == 1 and len(peers.question_vectors) == 2
    for given in peers.question_vectors:
        assert given is not None and given.model == "mini"
        assert given.vectors.shape == (1, 4) and np.allclose(given.vectors, 1.0)


async def test_an_ask_reads_your_writes_through_every_search() -> None:
    """min_index_version reaches retrieval on every Ask, cached or not: the answer cache is
    keyed by the version the search ran against, so a replayed answer never predates it."""
    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)
    await run(p, top_k=3, min_index_version=7)
    replayed = await run(p, top_k=3, min_index_version=7)
    assert replayed[-1].cache_hit  # type: ignore[attr-defined]
    assert peers.min_versions == [7, 7]
    await run(p)
    assert peers.min_versions[-1] == 0
    # every search names the model its question's vector came from: the index refuses another
    assert peers.models == ["mini", "mini", "mini"]


async def test_question_embedding_is_cached() -> None:
    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)
    await run(p)
    await run(p, skip_cache=True)
    assert peers.embeds == 1
    assert any(k.startswith("ragmesh:emb:default:mini:") for k in redis.data)


async def test_redis_down_answers_without_cache_and_counts_bypasses() -> None:
    from ragmesh.query.cache import BYPASS

    redis, peers = MemoryRedis(), Peers()
    redis.down = True
    p = pipeline(redis, peers)
    before = BYPASS.labels("get")._value.get()
    events = await run(p)
    events = await run(p)
    assert isinstance(events[-1], AskDone) and not events[-1].cache_hit
    assert peers.generations == 2
    assert BYPASS.labels("get")._value.get() > before


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "q" * 3000}, "question"),
        ({"question": "q", "top_k": 500}, "top_k"),
        ({"question": "q", "filter": {"": "x"}}, "filter"),
        ({"question": "q", "params": Params(top_p=2.0)}, "params.top_p"),
    ],
)
async def test_bad_requests_name_the_field_and_call_nothing(
    kw: dict[str, object], field: str
) -> None:
    peers = Peers()
    with pytest.raises(InvalidArgument) as e:
        await run(pipeline(MemoryRedis(), peers), **kw)
    assert e.value.field == field
    assert (peers.embeds, peers.searches, peers.generations) == (0, 0, 0)


async def test_an_injected_first_token_delay_is_in_the_time_to_first_token() -> None:
    """RAGMESH_FAULT_DELAY_MS for canary-analysis tests: query's own histogram sees it, as the
    time-to-first-token gate must (the rehearsal's query latency scenario)."""
    redis, peers = MemoryRedis(), Peers()
    cache = RedisCache(redis, retry_after=0.0)  # type: ignore[arg-type]
    p = AskPipeline(settings_for().query, peers, peers, peers, cache, first_token_delay=0.3)
    events = await run(p, skip_cache=True)
    assert events[-1].timings.first_token_ms >= 300  # type: ignore[attr-defined]


class CountingRedis(MemoryRedis):
    """MemoryRedis with the two counter calls the token budget makes."""

    async def incrby(self, key: str, amount: int) -> int:
        if self.down:
            raise RedisConnectionError("connection refused")
        value = int(self.data.get(key, b"0")) + amount
        self.data[key] = str(value).encode()
        return value

    async def expire(self, key: str, seconds: int) -> bool:
        return True


async def test_a_tenant_over_its_token_budget_is_refused_before_generation() -> None:
    from prometheus_client import REGISTRY

    from ragmesh.kit import callcontext
    from ragmesh.kit.errors import QuotaExceeded
    from ragmesh.query.budget import TokenBudget

    redis, peers = CountingRedis(), Peers()
    cache = RedisCache(redis, retry_after=0.0)  # type: ignore[arg-type]
    budget = TokenBudget(redis, per_minute=8, clock=lambda: 600.0)  # 4 tokens per answer
    p = AskPipeline(settings_for().query, peers, peers, peers, cache, budget=budget)

    async def ask_as(tenant: str) -> list[object]:
        headers = [("x-ragmesh-tenant", tenant)] if tenant else []
        token = callcontext.bind(callcontext.from_metadata(headers, None))
        try:
            return await run(p, skip_cache=True)
        finally:
            callcontext.unbind(token)

    await ask_as("acme")
    await ask_as("acme")  # 8 of 8 spent
    generated = peers.generations
    with pytest.raises(
        QuotaExceeded, match="budget of 8 generated tokens per minute; retry in 60 s"
    ):
        await ask_as("acme")
    assert peers.generations == generated  # refused before generation, nothing streamed
    await ask_as("globex")  # another tenant's budget is its own
    await ask_as("")  # the mesh's own callers (no tenant) have none
    assert (
        REGISTRY.get_sample_value("ragmesh_tenant_token_budget_remaining", {"tenant": "acme"}) == 0
    )
    assert (
        REGISTRY.get_sample_value("ragmesh_tenant_budget_refusals_total", {"tenant": "acme"}) >= 1
    )
    redis.down = True  # the budget's Redis down: not enforced, the Ask is answered
    assert isinstance((await ask_as("acme"))[-1], AskDone)


async def ask_in(p: AskPipeline, headers: list[tuple[str, str]], **kw: object) -> list[object]:
    """An Ask as the ingress gateway forwards it (the verified token's headers)."""
    from ragmesh.kit import callcontext

    token = callcontext.bind(callcontext.from_metadata(headers, None))
    try:
        return await run(p, **kw)
    finally:
        callcontext.unbind(token)


async def test_every_ask_runs_in_the_callers_tenant_and_its_caches_are_the_tenants() -> None:
    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)
    acme = await ask_in(p, [("x-ragmesh-tenant", "acme")])
    assert peers.tenants == ["acme"]
    assert acme[0].citations[0].snippet.startswith("acme ")  # type: ignore[attr-defined]
    # the same question from another tenant: neither cache answers it from acme's entries
    globex = await ask_in(p, [("x-ragmesh-tenant", "globex")])
    assert not globex[-1].cache_hit  # type: ignore[attr-defined]
    assert globex[0].citations[0].snippet.startswith("globex ")  # type: ignore[attr-defined]
    assert peers.embeds == 2 and peers.generations == 2
    assert (await ask_in(p, [("x-ragmesh-tenant", "acme")]))[-1].cache_hit  # type: ignore[attr-defined]
    # the mesh's own callers (no verified tenant) ask in RAGMESH_DEFAULT_TENANT
    await ask_in(p, [])
    assert peers.tenants == ["acme", "globex", "acme", "default"]


async def test_a_malformed_tenant_claim_is_refused_never_served_in_the_default_tenant() -> None:
    from ragmesh.kit.errors import PermissionDenied

    peers = Peers()
    p = pipeline(MemoryRedis(), peers)
    for bad in ("", "a b", "x/../y", "-x"):
        with pytest.raises(PermissionDenied, match="tenant claim"):
            await ask_in(p, [("x-ragmesh-tenant", bad)])
    assert peers.searches == 0
    q = settings_for(RAGMESH_DEFAULT_TENANT="").query
    no_default = AskPipeline(q, peers, peers, peers, RedisCache(MemoryRedis()))  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied, match="no verified tenant"):
        await ask_in(no_default, [])


async def test_below_the_relevance_floor_the_answer_is_no_answer_and_counted() -> None:
    from ragmesh.kit.domain import Outcome
    from ragmesh.query.service import ANSWERS, NO_ANSWER

    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)
    floor = settings_for().query.min_relevance
    assert floor > 0  # on by default
    before = ANSWERS.labels("no_answer")._value.get()
    peers.best = floor - 0.01
    events = await run(p, "the recipe for banana bread?")
    assert events[0] == Citations(())  # cites nothing
    assert "".join(e.text for e in events[1:-1]) == NO_ANSWER  # type: ignore[attr-defined]
    done = events[-1]
    assert isinstance(done, AskDone) and done.outcome is Outcome.NO_ANSWER
    assert done.groundedness == 0.0
    assert peers.generations == 0
    assert ANSWERS.labels("no_answer")._value.get() == before + 1
    assert peers.texts == ["the recipe for banana bread?"]  # the search was hybrid


async def test_an_answer_reports_its_outcome_and_groundedness_also_when_replayed() -> None:
    from ragmesh.kit.domain import Outcome
    from ragmesh.query.service import ANSWERS

    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)
    before = ANSWERS.labels("answered")._value.get()
    first = await run(p)
    replayed = await run(p)
    for done in (first[-1], replayed[-1]):
        assert isinstance(done, AskDone) and done.outcome is Outcome.ANSWERED
    assert first[-1].groundedness == 1.0  # type: ignore[attr-defined]  # the passage says so
    assert replayed[-1].groundedness == 1.0  # type: ignore[attr-defined]
    assert replayed[-1].cache_hit  # type: ignore[attr-defined]
    assert ANSWERS.labels("answered")._value.get() == before + 2


async def test_an_engine_that_finds_nothing_to_say_is_a_no_answer_too() -> None:
    from ragmesh.kit.domain import NO_ANSWER, Outcome

    peers = Peers()
    peers.words = tuple(f" {w}" if i else w for i, w in enumerate(NO_ANSWER.split(" ")))
    done = (await run(pipeline(MemoryRedis(), peers)))[-1]
    assert isinstance(done, AskDone) and done.outcome is Outcome.NO_ANSWER
    assert peers.generations == 1  # the passages were relevant enough to ask


class GatedPeers(Peers):
    """Peers whose generation waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def generate(
        self,
        question: str,
        passages: Sequence[Hit],
        params: Params,
        question_vector: Embedded | None = None,
    ) -> AsyncIterator[Delta | Done]:
        await self.release.wait()
        async for event in super().generate(question, passages, params, question_vector):
            yield event


def gated_pipeline(peers: GatedPeers, **env: str) -> AskPipeline:
    cache = RedisCache(MemoryRedis(), retry_after=0.0)  # type: ignore[arg-type]
    return AskPipeline(settings_for(**env).query, peers, peers, peers, cache)


async def test_an_ask_without_a_slot_is_refused_before_any_work() -> None:
    from ragmesh.kit.errors import Overloaded
    from ragmesh.query.admission import ADMISSIONS

    peers = GatedPeers()
    p = gated_pipeline(peers, RAGMESH_QUERY_MAX_ASKS="1", RAGMESH_QUERY_ADMISSION_WAIT_MS="50")
    refused = ADMISSIONS.labels("refused")._value.get()
    first = asyncio.create_task(run(p, "the first question?"))
    while peers.embeds == 0:
        await asyncio.sleep(0.001)
    with pytest.raises(Overloaded) as e:
        await run(p, "another question?")
    assert str(e.value) == "the service is busy: too many questions at once; retry shortly"
    assert (peers.embeds, peers.searches) == (1, 1)  # nothing was spent on the refused one
    assert ADMISSIONS.labels("refused")._value.get() == refused + 1
    peers.release.set()
    assert isinstance((await first)[-1], AskDone)
    # the slot is free again: a later Ask is admitted
    assert isinstance((await run(p, "another question?"))[-1], AskDone)


async def test_a_full_admission_queue_refuses_at_once() -> None:
    """Past RAGMESH_QUERY_MAX_QUEUED waiting Asks, the next is refused without waiting (a
    bounded queue, as Envoy's max_pending_requests), however long the wait allows."""
    from ragmesh.kit.errors import Overloaded

    peers = GatedPeers()
    p = gated_pipeline(
        peers,
        RAGMESH_QUERY_MAX_ASKS="1",
        RAGMESH_QUERY_MAX_QUEUED="1",
        RAGMESH_QUERY_ADMISSION_WAIT_MS="5000",
    )
    first = asyncio.create_task(run(p, "the first question?"))
    while peers.embeds == 0:
        await asyncio.sleep(0.001)
    queued = asyncio.create_task(run(p, "the second question?"))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    with pytest.raises(Overloaded):
        await run(p, "a third question?")
    assert time.perf_counter() - started < 1.0  # refused at once, not after the wait
    peers.release.set()
    assert isinstance((await first)[-1], AskDone) and isinstance((await queued)[-1], AskDone)
    assert peers.embeds == 2


async def test_identical_concurrent_asks_are_computed_once_and_shared() -> None:
    from ragmesh.query.admission import ADMISSIONS

    peers = GatedPeers()
    p = gated_pipeline(peers, RAGMESH_QUERY_MAX_ASKS="1", RAGMESH_QUERY_ADMISSION_WAIT_MS="0")
    shared = ADMISSIONS.labels("shared")._value.get()
    asks = [asyncio.create_task(run(p, "What is it?", skip_cache=True)) for _ in range(5)]
    while peers.embeds == 0:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    peers.release.set()
    answers = await asyncio.gather(*asks)  # one slot, no wait: only sharing lets all through
    assert (peers.embeds, peers.searches, peers.generations) == (1, 1, 1)
    texts = {"".join(e.text for e in a if isinstance(e, Delta)) for a in answers}
    assert len(texts) == 1 and all(isinstance(a[-1], AskDone) for a in answers)
    assert ADMISSIONS.labels("shared")._value.get() == shared + 4


async def test_a_leader_whose_caller_leaves_does_not_strand_its_followers() -> None:
    peers = GatedPeers()
    p = gated_pipeline(peers)
    leader = p.ask(AskInput("What is it?", skip_cache=True))
    assert isinstance(await leader.__anext__(), Citations)  # in flight, waiting to generate
    follower = asyncio.create_task(run(p, "What is it?", skip_cache=True))
    await asyncio.sleep(0.01)
    await leader.aclose()  # its caller went away
    peers.release.set()
    events = await follower  # computed on its own
    assert isinstance(events[-1], AskDone) and peers.searches == 2


async def test_an_overloaded_service_behind_the_front_door_is_refused_without_internals() -> None:
    from ragmesh.kit.errors import Overloaded

    class Busy(Peers):
        async def generate(
            self,
            question: str,
            passages: Sequence[Hit],
            params: Params,
            question_vector: Embedded | None = None,
        ) -> AsyncIterator[Delta | Done]:
            raise Overloaded("generation overloaded: 8 generations in flight")
            yield Delta("")  # a generator

    with pytest.raises(Overloaded) as e:
        await run(pipeline(MemoryRedis(), Busy()))
    assert str(e.value) == "the service is busy: too many questions at once; retry shortly"


async def test_an_ask_for_the_canary_never_shares_the_primarys_answer() -> None:
    from ragmesh.kit import callcontext

    peers = GatedPeers()
    p = gated_pipeline(peers)

    async def ask(canary: str) -> list[object]:
        token = callcontext.bind(
            callcontext.CallContext("r", (("x-ragmesh-canary", canary),), None)
        )
        try:
            return await run(p, "What is it?", skip_cache=True)
        finally:
            callcontext.unbind(token)

    asks = [asyncio.create_task(ask(c)) for c in ("true", "false", "true")]
    while peers.embeds == 0:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    peers.release.set()
    await asyncio.gather(*asks)
    assert peers.generations == 2  # one per route: the two canary Asks shared theirs


async def test_the_answer_cache_keeps_the_canarys_answers_apart_from_the_primarys() -> None:
    """An Ask routed to the generation canary is answered by the canary, never from an
    answer the primary left in the cache (nor the other way round): the A/B sees its users."""
    from ragmesh.kit import callcontext

    redis, peers = MemoryRedis(), Peers()
    p = pipeline(redis, peers)

    async def ask(canary: str | None) -> AskDone:
        headers = (("x-ragmesh-canary", canary),) if canary else ()
        token = callcontext.bind(callcontext.CallContext("r", headers, None))
        try:
            done = (await run(p, "What is it?"))[-1]
        finally:
            callcontext.unbind(token)
        assert isinstance(done, AskDone)
        return done

    assert not (await ask(None)).cache_hit
    assert (await ask(None)).cache_hit
    assert not (await ask("true")).cache_hit  # the canary answers it
    assert (await ask("true")).cache_hit
    assert peers.generations == 2
