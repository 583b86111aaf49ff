"""The ingest queue and worker on a real Redis server, with fake peers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragmesh.ingest.__main__ import build
from ragmesh.ingest.worker import IngestWorker
from ragmesh.kit.domain import ChunkRecord, DocumentIn, Embedded, JobState, Purpose, SearchResult
from ragmesh.kit.errors import InvalidArgument, ModelMismatch
from ragmesh.kit.jobqueue import JobQueue, connect
from ragmesh.kit.server import ServiceHost
from ragmesh_lab import chart
from ragmesh_lab.cli.supervisor import Stack
from tests.conftest import settings_for, start
from tests.support.contract import ROOT


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(tmp_path_factory.mktemp("redis"))
    stack.workdir.mkdir(parents=True, exist_ok=True)
    stack.start_redis()
    yield stack.redis_url
    stack.down()


@pytest.fixture
async def queue(redis_url: str, tmp_path: Path) -> AsyncIterator[JobQueue]:
    client = connect(redis_url, 1.0)
    q = JobQueue(client, f"test:{tmp_path.name}", 60)
    await q.ensure_group()
    yield q
    await client.aclose()


T = "acme"  # the tenant the tests' jobs belong to


class Store:
    """Embedder and retriever: records upserted chunk ids; rejects texts containing BAD."""

    def __init__(self) -> None:
        self.chunks: dict[str, str] = {}  # chunk id -> text, of tenant T
        self.tenants: dict[tuple[str, str], str] = {}  # (tenant, chunk id) -> document id
        self.upserts = 0
        self.version = 0  # the index version: one more per write, as the writer counts
        self.model = ""  # the embedding model the index records: the first upsert's

    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Embedded:
        if any("BAD" in t for t in texts):
            raise InvalidArgument("texts[0]", "rejected")
        return Embedded(np.zeros((len(texts), 4), dtype=np.float32), "fake")

    async def search(
        self,
        tenant: str,
        vector: object,
        top_k: int,
        filter: Mapping[str, str],
        min_index_version: int = 0,
        model: str = "",
    ) -> SearchResult:
        return SearchResult((), 0)

    async def upsert(self, tenant: str, chunks: Sequence[ChunkRecord], model: str = "") -> int:
        self.model = self.model or model
        if model != self.model:
            raise ModelMismatch(f"embedding_model: the index holds {self.model!r}, not {model!r}")
        self.upserts += 1
        if tenant == T:
            self.chunks.update({c.chunk_id: c.text for c in chunks})
        self.tenants.update({(tenant, c.chunk_id): c.document_id for c in chunks})
        self.version += 1
        return self.version

    async def delete(
        self, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> tuple[int, int]:
        gone = {k for k, doc in self.tenants.items() if k[0] == tenant and doc in document_ids}
        gone |= {(tenant, c) for c in chunk_ids if (tenant, c) in self.tenants}
        for key in gone:
            del self.tenants[key]
            if tenant == T:
                self.chunks.pop(key[1], None)
        self.version += 1
        return len(gone), self.version


def worker(queue: JobQueue, store: Store, name: str, **env: str) -> IngestWorker:
    settings = settings_for(RAGMESH_CHUNK_SIZE_CHARS="60", RAGMESH_CHUNK_OVERLAP_CHARS="0", **env)
    return IngestWorker(settings.ingest, queue, store, store, name, block_ms=10)


async def until_done(w: IngestWorker, queue: JobQueue, job: str) -> None:
    for _ in range(500):  # bounded; each idle step blocks at most 10 ms
        await w.step()
        if (await queue.job(T, job)).state in (JobState.SUCCEEDED, JobState.FAILED):
            return
    raise AssertionError("job did not finish")


TEXT = "One sentence here. Another sentence there. A third one to finish. And a fourth."


async def test_a_dead_consumers_entry_is_claimed_and_counted_once(queue: JobQueue) -> None:
    store = Store()
    job = await queue.enqueue(T, [DocumentIn("a", "A", TEXT), DocumentIn("b", "B", TEXT)])
    dead = await queue.read("dead", 1, 0, pending=False)  # delivered, never acknowledged
    assert [e.document.document_id for e in dead] == ["a"]
    live = worker(queue, store, "live", RAGMESH_INGEST_CLAIM_IDLE_MS="1")
    while await live.step():
        pass
    status = await queue.job(T, job)
    assert status.state is JobState.SUCCEEDED
    assert (status.documents_done, status.chunks_done) == (2, len(store.chunks))
    # read your writes: the job names the index version its last write reached
    assert status.index_version == store.version > 0
    await queue.finish(dead[0], True, 99, index_version=1)  # a late ack changes nothing
    late = await queue.job(T, job)
    assert (late.chunks_done, late.index_version) == (len(store.chunks), store.version)


async def test_an_invalid_document_fails_the_job_with_its_error(queue: JobQueue) -> None:
    store = Store()
    job = await queue.enqueue(T, [DocumentIn("ok", "", TEXT), DocumentIn("bad", "", "BAD text.")])
    w = worker(queue, store, "w1")
    while await w.step():
        pass
    status = await queue.job(T, job)
    assert status.state is JobState.FAILED
    assert (status.documents_done, status.documents_failed) == (1, 1)
    assert status.last_error.startswith("bad: texts[0]")


async def test_vectors_of_another_embedding_model_fail_the_document(queue: JobQueue) -> None:
    """The worker names its vectors' model on every upsert; an index of another model refuses
    them (FAILED_PRECONDITION), and the document fails with that message, not retried."""
    store = Store()
    store.model = "an-older-model"
    job = await queue.enqueue(T, [DocumentIn("ok", "", TEXT)])
    w = worker(queue, store, "w1")
    while await w.step():
        pass
    status = await queue.job(T, job)
    assert status.state is JobState.FAILED and status.documents_failed == 1
    assert status.last_error == "ok: embedding_model: the index holds 'an-older-model', not 'fake'"
    assert store.upserts == 0


async def test_a_document_that_keeps_killing_workers_is_given_up(queue: JobQueue) -> None:
    job = await queue.enqueue(T, [DocumentIn("doomed", "", TEXT)])
    await queue.read("w0", 1, 0, pending=False)
    for n in range(3):  # three more workers claim it and "die" before finishing
        assert await queue.claim(f"w{n + 1}", 0, 8)
    w = worker(
        queue, Store(), "w9", RAGMESH_INGEST_CLAIM_IDLE_MS="1", RAGMESH_INGEST_MAX_DELIVERIES="3"
    )
    await until_done(w, queue, job)
    status = await queue.job(T, job)
    assert status.state is JobState.FAILED and "gave up after" in status.last_error


async def test_reingesting_a_shorter_document_drops_its_old_tail(queue: JobQueue) -> None:
    store = Store()
    w = worker(queue, store, "w")
    await queue.enqueue(T, [DocumentIn("doc", "", TEXT)])
    while await w.step():
        pass
    long_ids = set(store.chunks)
    await queue.enqueue(T, [DocumentIn("doc", "", "Just one short sentence.")])
    while await w.step():
        pass
    assert len(long_ids) > 1 and set(store.chunks) == {"doc#0"}


async def test_jobs_are_their_tenants_and_deletion_is_a_job_of_its_own(
    queue: JobQueue,
) -> None:
    from ragmesh.kit.errors import NotFound

    store = Store()
    w = worker(queue, store, "w")
    mine = await queue.enqueue(T, [DocumentIn("manual", "", TEXT)])
    theirs = await queue.enqueue("globex", [DocumentIn("manual", "", TEXT)])
    await until_done(w, queue, mine)
    while await w.step():
        pass
    # each tenant's chunks went into its own tenant; a job is invisible to other tenants
    assert {k[0] for k in store.tenants} == {T, "globex"}
    with pytest.raises(NotFound) as e:
        await queue.job(T, theirs)
    assert str(e.value) == f"job_id: no ingest job {theirs!r}"  # as for an unknown id
    assert (await queue.job("globex", theirs)).state is JobState.SUCCEEDED
    chunks = len(store.chunks)
    deletion = await queue.enqueue_delete(T, "manual")
    await until_done(w, queue, deletion)
    status = await queue.job(T, deletion)
    assert status.state is JobState.SUCCEEDED
    assert (status.documents_done, status.chunks_done) == (1, chunks)
    assert status.index_version == store.version  # an Ask with it no longer finds them
    assert store.chunks == {} and {k[0] for k in store.tenants} == {"globex"}
    assert await queue.previous_chunks(T, "manual") == 0
    # re-ingesting after the deletion starts from nothing (no stale tail to drop)
    await until_done(w, queue, await queue.enqueue(T, [DocumentIn("manual", "", TEXT)]))
    assert len(store.chunks) == chunks


async def test_entries_queued_before_tenants_belong_to_the_default_tenant(
    queue: JobQueue,
) -> None:
    """An entry and a job record as a worker of the previous release left them."""
    import json

    store = Store()
    await queue.redis.hset(
        f"{queue.stream}:job:{'a' * 32}",
        mapping={
            "state": "QUEUED",
            "documents_total": 1,
            "documents_done": 0,
            "documents_failed": 0,
            "chunks_done": 0,
            "chunks_failed": 0,
            "last_error": "",
        },
    )
    body = {"document_id": "old", "title": "", "text": TEXT, "metadata": {}, "source": ""}
    await queue.redis.xadd(queue.stream, {"job": "a" * 32, "seq": 0, "doc": json.dumps(body)})
    w = worker(queue, store, "w")
    while await w.step():
        pass
    assert {k[0] for k in store.tenants} == {"default"}
    assert (await queue.job("default", "a" * 32)).state is JobState.SUCCEEDED
    from ragmesh.kit.errors import NotFound

    with pytest.raises(NotFound):
        await queue.job(T, "a" * 32)


class Exploding(Store):
    """An embedder with a bug: raises something no dependency outage raises."""

    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Embedded:
        if any("EXPLODE" in t for t in texts):
            raise RuntimeError("a bug")
        return await super().embed(texts, purpose)


async def test_an_unexpected_error_fails_only_that_document(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    store = Exploding()
    job = await queue.enqueue(
        T, [DocumentIn("boom", "", "EXPLODE now."), DocumentIn("ok", "", TEXT)]
    )
    w = worker(queue, store, "w")
    while await w.step():
        pass
    status = await queue.job(T, job)
    assert (status.documents_done, status.documents_failed) == (1, 1)
    assert status.last_error == "boom: internal error (RuntimeError)"
    assert await queue.backlog() == (0, 0)
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_failing_worker_loop_turns_health_not_serving(
    queue: JobQueue, stop_hosts: list[ServiceHost], caplog: pytest.LogCaptureFixture
) -> None:
    w = worker(queue, Store(), "w")

    async def broken() -> tuple[int, int]:
        raise ValueError("backlog reply not understood")

    w.queue.backlog = broken  # type: ignore[method-assign]
    host = await start(settings_for(), build(w))
    stop_hosts.append(host)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    failure = [
        r for r in caplog.records if r.getMessage() == "ingest failed: reporting NOT_SERVING"
    ]
    assert failure and failure[0].exc_info and "not understood" in str(failure[0].exc_info[1])


async def test_the_local_redis_needs_its_password_and_keeps_the_queue_across_a_restart(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path)
    stack.start_redis()
    try:
        anonymous = redis.Redis(port=stack.redis_port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        assert stack.redis_password not in " ".join(stack.procs["redis"].popen.args)
        assert stack.redis_password not in (tmp_path / "redis.conf").read_text()
        assert (tmp_path / "redis-auth.conf").stat().st_mode & 0o077 == 0
        client = connect(stack.redis_url, 1.0)
        q = JobQueue(client, "persist", 60)
        await q.ensure_group()
        job = await q.enqueue(T, [DocumentIn("kept", "", TEXT)])
        await client.aclose()
        await asyncio.sleep(1.5)  # appendfsync everysec, as in the cluster
        stack.kill("redis")  # SIGKILL: only what reached the append-only file survives
        stack.start_redis()
        client = connect(stack.redis_url, 1.0)
        q = JobQueue(client, "persist", 60)
        assert (await q.job(T, job)).state is JobState.QUEUED
        entries = await q.read("w", 8, 0, pending=False)
        assert [e.document.document_id for e in entries] == ["kept"]
        await client.aclose()
    finally:
        stack.down()


def keda_trigger() -> dict[str, object]:
    scaled = chart.find(ROOT, "ScaledObject", "ingest")
    return {"spec": scaled["spec"], "metadata": scaled["spec"]["triggers"][0]["metadata"]}


def keda_replicas(trigger: dict[str, object], pending: int, lag: int) -> int:
    """The replica count the HPA that KEDA drives computes for the shipped redis-streams
    trigger: ceil(metric / target) (AverageValue), clamped to min and max replica counts."""
    spec, meta = trigger["spec"], trigger["metadata"]
    assert isinstance(spec, dict) and isinstance(meta, dict)
    if "lagCount" in meta:
        metric, target = lag, int(meta["lagCount"])
    elif "pendingEntriesCount" in meta:
        metric, target = pending, int(meta["pendingEntriesCount"])
    else:
        raise AssertionError(f"unexpected trigger {meta}")
    wanted = math.ceil(metric / target)
    return max(spec["minReplicaCount"], min(spec["maxReplicaCount"], wanted))


async def test_keda_scales_ingest_out_on_a_real_backlog(queue: JobQueue) -> None:
    """200 documents wait while two workers each hold one: the shipped trigger must ask for
    more workers (pendingEntriesCount saw 2 and kept one replica)."""
    await queue.enqueue(T, [DocumentIn(f"d{i}", "", TEXT) for i in range(200)])
    for worker_name in ("w1", "w2"):  # two busy workers, each with an entry in hand
        assert len(await queue.read(worker_name, 1, 0, pending=False)) == 1
    pending, lag = await queue.backlog()
    assert (pending, lag) == (2, 198)
    trigger = keda_trigger()
    assert keda_replicas(trigger, pending, lag) == 10  # 198 / 20 -> 10, the maximum
    assert keda_replicas(trigger, 0, 0) == 1  # an empty queue: back to the minimum


def test_a_full_cache_evicts_and_a_full_queue_refuses_writes(tmp_path: Path) -> None:
    """The two Redis roles run the shipped redis-config: the cache evicts its least recently
    used entries when full; the queue never evicts, it refuses writes (Ingest then answers
    UNAVAILABLE) and keeps every entry it accepted."""
    stack = Stack(tmp_path)
    stack.start_redis()
    stack.start_cache()
    cache = redis.Redis.from_url(stack.cache_url)
    queue = redis.Redis.from_url(stack.redis_url)
    try:
        assert cache.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert cache.config_get("appendonly")["appendonly"] == "no"
        assert queue.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert queue.config_get("appendonly")["appendonly"] == "yes"
        for role in (cache, queue):  # the shipped limits (hundreds of MB), small enough to fill
            assert int(role.config_get("maxmemory")["maxmemory"]) > 0
            role.config_set("maxmemory", "4mb")
        value = b"x" * 8192
        for i in range(2000):  # 16 MB into a 4 MB cache: no error, old entries go
            cache.set(f"ragmesh:ans:{i}", value)
        assert int(cache.info("stats")["evicted_keys"]) > 0
        assert cache.dbsize() < 2000 and cache.get("ragmesh:ans:1999") == value
        accepted = 0
        with pytest.raises(redis.ResponseError, match="used memory > 'maxmemory'"):
            for _ in range(2000):
                queue.xadd("ragmesh:ingest", {"document": value})
                accepted += 1
        assert 0 < accepted < 2000
        assert queue.xlen("ragmesh:ingest") == accepted
        assert int(queue.info("stats")["evicted_keys"]) == 0
    finally:
        cache.close()
        queue.close()
        stack.down()


def test_the_local_redis_starts_under_a_relative_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ragmesh up` and `make demo` keep their state in var/... relative to the checkout:
    Redis reads its configuration after changing into its own directory."""
    monkeypatch.chdir(tmp_path)
    stack = Stack(Path("var/ragmesh"))
    try:
        stack.start_redis()
        stack.start_cache()
        client = redis.Redis(port=stack.redis_port, password=stack.redis_password)
        assert client.ping()
        client.close()
    finally:
        stack.down()
