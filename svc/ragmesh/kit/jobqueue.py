"""The ingestion queue on Redis: one Stream entry per document, job progress in a hash.

Shared by the query service (producer: :meth:`JobQueue.enqueue`, :meth:`JobQueue.job`) and
the ingest worker (consumer group). Every job belongs to one tenant: its entries carry it, and
only that tenant can read the job. A deletion (:meth:`JobQueue.enqueue_delete`) is a job of
one entry that removes a document instead of indexing one. Progress and the stream
acknowledgement are updated in one Lua script, after the chunks were upserted, and each
document is counted once even when it is delivered again. No grpc here; Redis failures
become DependencyUnavailable.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ragmesh.kit import tracing
from ragmesh.kit.domain import (
    DEFAULT_TENANT,
    DocumentIn,
    JobState,
    JobStatus,
    document_id_problem,
    document_problem,
    is_job_id,
    tenant_problem,
)
from ragmesh.kit.errors import DependencyUnavailable, FailedPrecondition, NotFound, quoted

GROUP = "ingest-workers"


@dataclass(frozen=True)
class Entry:
    """One stream entry handed to a worker."""

    entry_id: str
    job_id: str
    seq: int
    document: DocumentIn
    deliveries: int = 1
    #: request id and trace context of the Ingest call (:func:`ragmesh.kit.tracing.carrier`)
    trace: dict[str, str] = field(default_factory=dict)
    #: why the entry could not be read (a malformed entry: failed and acknowledged, not run)
    problem: str = ""
    #: whose document it is (entries queued before tenants existed: the default tenant)
    tenant: str = DEFAULT_TENANT
    #: remove the document's chunks instead of indexing it (``document`` has only its id)
    delete: bool = False
    #: the document as queued (a failed one is kept so RetryIngestJob can queue it again)
    body: dict[str, Any] = field(default_factory=dict)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def parse_entry(entry_id: str, fields: Mapping[bytes, bytes]) -> Entry:
    """The entry as :meth:`JobQueue.enqueue` wrote it; one that is not comes back with
    ``problem`` set (and the job it names, when that much is readable), never raises."""
    job_id = fields.get(b"job", b"").decode("utf-8", "replace")
    if not is_job_id(job_id):
        job_id = ""
    try:
        seq = int(fields.get(b"seq", b"-1"))
    except ValueError:
        seq = -1
    delete = fields.get(b"op", b"ingest") == b"delete"
    try:
        tenant = fields.get(b"tenant", DEFAULT_TENANT.encode()).decode()
        if (wrong := tenant_problem(tenant)) is not None:
            raise ValueError(f"tenant: {wrong}")
        body = json.loads(fields[b"doc"])
        if delete:
            doc = DocumentIn(_text(body["document_id"]), "", "")
            found = document_id_problem(doc.document_id)
        else:
            metadata = body.get("metadata", {})
            if not isinstance(metadata, dict):
                raise ValueError("metadata is not a map")
            doc = DocumentIn(
                document_id=_text(body["document_id"]),
                title=_text(body.get("title", "")),
                text=_text(body["text"]),
                metadata={_text(k): _text(v) for k, v in metadata.items()},
                source=_text(body.get("source", "")),
                content=base64.b64decode(_text(body.get("content", "")), validate=True),
                media_type=_text(body.get("media_type", "")),
            )
            found = document_problem(doc)
        if found is not None:
            raise ValueError(f"{found[0]}: {found[1]}")
        trace = json.loads(fields.get(b"trace", b"{}"))
        if not isinstance(trace, dict):
            trace = {}
        carried = {k: v for k, v in trace.items() if isinstance(k, str) and isinstance(v, str)}
    except (KeyError, ValueError, TypeError, AttributeError) as e:  # binascii.Error too
        problem = f"malformed queue entry {entry_id}: {type(e).__name__}: {str(e)[:200]}"
        return Entry(entry_id, job_id, seq, DocumentIn("", "", ""), problem=problem)
    if not job_id:
        return Entry(entry_id, "", seq, doc, problem=f"malformed queue entry {entry_id}: no job id")
    return Entry(entry_id, job_id, seq, doc, trace=carried, tenant=tenant, delete=delete, body=body)


# Counts a document once (SADD), updates the job (its index_version: the highest its writes
# reached, set before the state can say SUCCEEDED), and acknowledges + deletes the entry.
_FINISH = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  local version = tonumber(ARGV[8]) or 0
  if version > tonumber(redis.call('HGET', KEYS[1], 'index_version') or '0') then
    redis.call('HSET', KEYS[1], 'index_version', ARGV[8])
  end
  if ARGV[2] == '1' then
    redis.call('HINCRBY', KEYS[1], 'documents_done', 1)
    redis.call('HINCRBY', KEYS[1], 'chunks_done', ARGV[3])
  else
    redis.call('HINCRBY', KEYS[1], 'documents_failed', 1)
    redis.call('HINCRBY', KEYS[1], 'chunks_failed', ARGV[3])
    redis.call('HSET', KEYS[1], 'last_error', ARGV[4])
  end
  local total = tonumber(redis.call('HGET', KEYS[1], 'documents_total') or '0')
  local done = tonumber(redis.call('HGET', KEYS[1], 'documents_done') or '0')
  local failed = tonumber(redis.call('HGET', KEYS[1], 'documents_failed') or '0')
  if done + failed >= total then
    if failed > 0 then
      redis.call('HSET', KEYS[1], 'state', 'FAILED')
    else
      redis.call('HSET', KEYS[1], 'state', 'SUCCEEDED')
    end
  else
    redis.call('HSET', KEYS[1], 'state', 'RUNNING')
  end
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
redis.call('XACK', KEYS[3], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[3], ARGV[6])
return 1
"""

_START = """
if redis.call('HGET', KEYS[1], 'state') == 'QUEUED' then
  redis.call('HSET', KEYS[1], 'state', 'RUNNING')
end
return 1
"""


@contextlib.asynccontextmanager
async def redis_errors(what: str) -> AsyncIterator[None]:
    """Turn Redis client errors into DependencyUnavailable."""
    try:
        yield
    except (RedisError, OSError) as e:
        raise DependencyUnavailable(f"redis unavailable during {what}: {e}") from e


def connect(url: str, timeout: float, read_timeout: float | None = None) -> aioredis.Redis:
    """A Redis client with short timeouts (a dead Redis must fail fast, not hang calls)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=read_timeout or timeout,
        socket_connect_timeout=timeout,
        decode_responses=False,
        retry_on_timeout=False,
    )


class JobQueue:
    """Documents in, progress out."""

    def __init__(self, client: aioredis.Redis, stream: str, job_ttl: int) -> None:
        self.redis = client
        self.stream = stream
        self.ttl = job_ttl
        self._finish = client.register_script(_FINISH)
        self._start = client.register_script(_START)

    def _job_key(self, job_id: str) -> str:
        return f"{self.stream}:job:{job_id}"

    def _jobs_key(self, tenant: str) -> str:
        return f"{self.stream}:jobs:{tenant}"

    def _doc_key(self, tenant: str, document_id: str) -> str:
        if tenant == DEFAULT_TENANT:  # the key documents had before tenants existed
            return f"{self.stream}:doc:{document_id}:chunks"
        return f"{self.stream}:tenant:{tenant}:doc:{document_id}:chunks"

    async def enqueue(self, tenant: str, docs: Sequence[DocumentIn]) -> str:
        """Record ``tenant``'s job and queue its documents atomically; returns the job id."""
        bodies = [
            {
                "document_id": d.document_id,
                "title": d.title,
                "text": d.text,
                "metadata": dict(d.metadata),
                "source": d.source,
                **(
                    {"content": base64.b64encode(d.content).decode(), "media_type": d.media_type}
                    if d.content
                    else {}
                ),
            }
            for d in docs
        ]
        return await self._enqueue(tenant, "ingest", bodies, "Ingest")

    async def enqueue_delete(self, tenant: str, document_id: str) -> str:
        """Queue the removal of ``tenant``'s document as a job of one entry; returns its id."""
        return await self._enqueue(
            tenant, "delete", [{"document_id": document_id}], "DeleteDocument"
        )

    async def _enqueue(
        self, tenant: str, op: str, bodies: Sequence[Mapping[str, object]], what: str
    ) -> str:
        job_id = uuid.uuid4().hex
        key = self._job_key(job_id)
        carried = json.dumps(tracing.carrier())
        async with redis_errors(what):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "state": JobState.QUEUED.name,
                        "documents_total": len(bodies),
                        "documents_done": 0,
                        "documents_failed": 0,
                        "chunks_done": 0,
                        "chunks_failed": 0,
                        "last_error": "",
                        "created": time.time(),
                        "tenant": tenant,
                    },
                )
                pipe.expire(key, self.ttl)
                now = time.time()
                pipe.zadd(self._jobs_key(tenant), {job_id: now})
                pipe.zremrangebyscore(self._jobs_key(tenant), "-inf", now - self.ttl)
                pipe.expire(self._jobs_key(tenant), self.ttl)
                for seq, body in enumerate(bodies):
                    fields = {
                        "job": job_id,
                        "seq": seq,
                        "op": op,
                        "tenant": tenant,
                        "doc": json.dumps(body),
                        "trace": carried,
                    }
                    pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
                await pipe.execute()
        return job_id

    async def job(self, tenant: str, job_id: str) -> JobStatus:
        """The progress of ``tenant``'s job ``job_id``; NotFound when unknown, expired or
        another tenant's (the same answer: a job id tells nothing about other tenants)."""
        async with redis_errors("GetIngestJob"):
            raw: Any = await self.redis.hgetall(self._job_key(job_id))
        h = {k.decode(): v.decode() for k, v in (raw or {}).items()}
        if not h or h.get("tenant", DEFAULT_TENANT) != tenant:
            raise NotFound(f"job_id: no ingest job {quoted(job_id)}")
        return JobStatus(
            job_id=job_id,
            state=JobState[h["state"]],
            documents_total=int(h["documents_total"]),
            documents_done=int(h["documents_done"]),
            documents_failed=int(h["documents_failed"]),
            chunks_done=int(h["chunks_done"]),
            chunks_failed=int(h["chunks_failed"]),
            last_error=h.get("last_error", ""),
            index_version=int(h.get("index_version", "0")),
            failed_documents=tuple(
                (str(f["document_id"]), str(f["error"])) for f in await self._failed(job_id)
            ),
        )

    async def _failed(self, job_id: str) -> list[dict[str, Any]]:
        """The failed documents of a job: their queue bodies and errors, in job order."""
        async with redis_errors("GetIngestJob"):
            raw: Any = await self.redis.hgetall(self._job_key(job_id) + ":failed")
        rows = sorted((int(k), json.loads(v)) for k, v in (raw or {}).items())
        return [row for _, row in rows]

    async def jobs(self, tenant: str, limit: int) -> list[JobStatus]:
        """``tenant``'s jobs, newest first (those not expired)."""
        async with redis_errors("ListIngestJobs"):
            ids: Any = await self.redis.zrevrange(self._jobs_key(tenant), 0, limit * 2)
        found = []
        for raw_id in ids:
            with contextlib.suppress(NotFound):  # expired meanwhile
                found.append(await self.job(tenant, raw_id.decode()))
            if len(found) == limit:
                break
        return found

    async def retry(self, tenant: str, job_id: str) -> str:
        """Queue the failed documents of ``tenant``'s job again, as a new job."""
        await self.job(tenant, job_id)  # NotFound for another tenant's
        failed = await self._failed(job_id)
        bodies = [f["body"] for f in failed if f.get("body")]
        if not bodies:
            raise FailedPrecondition(f"job_id: job {quoted(job_id)} has no failed documents")
        return await self._enqueue(tenant, "ingest", bodies, "RetryIngestJob")

    # --- consumer side -------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) when missing."""
        async with redis_errors("group creation"):
            try:
                await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def backlog(self) -> tuple[int, int]:
        """(entries delivered but not acknowledged, entries not yet delivered) of the group."""
        async with redis_errors("stream info"):
            groups: Any = await self.redis.xinfo_groups(self.stream)
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == GROUP:
                return int(g["pending"]), int(g.get("lag") or 0)
        return 0, 0

    def _entries(self, rows: Any) -> list[Entry]:
        out = []
        for entry_id, fields in rows or ():
            if not fields:  # deleted while pending
                continue
            out.append(parse_entry(entry_id.decode(), fields))
        return out

    async def read(self, consumer: str, count: int, block_ms: int, pending: bool) -> list[Entry]:
        """New entries (``pending=False``) or this consumer's own unacknowledged ones."""
        async with redis_errors("stream read"):
            try:
                reply: Any = await self.redis.xreadgroup(
                    GROUP,
                    consumer,
                    {self.stream: "0" if pending else ">"},
                    count=count,
                    block=None if pending else block_ms,
                )
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()  # Redis restarted empty: join again
                return []
        rows = reply[0][1] if reply else []
        return self._entries(rows)

    async def claim(self, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another (dead) consumer left pending for ``idle_ms``."""
        async with redis_errors("claim"):
            reply: Any = await self.redis.xautoclaim(
                self.stream, GROUP, consumer, min_idle_time=idle_ms, start_id="0", count=count
            )
            rows = reply[1]
            entries = self._entries(rows)
            if not entries:
                return []
            info: Any = await self.redis.xpending_range(
                self.stream,
                GROUP,
                min=entries[0].entry_id,
                max=entries[-1].entry_id,
                count=len(entries) * 2,
                consumername=consumer,
            )
        times = {p["message_id"].decode(): int(p["times_delivered"]) for p in info}
        return [replace(e, deliveries=times.get(e.entry_id, 1)) for e in entries]

    async def start(self, job_id: str) -> None:
        """Mark a queued job running."""
        async with redis_errors("job start"):
            await self._start(keys=[self._job_key(job_id)])

    async def previous_chunks(self, tenant: str, document_id: str) -> int:
        """How many chunks the last ingestion of ``tenant``'s ``document_id`` wrote."""
        async with redis_errors("chunk count"):
            raw = await self.redis.get(self._doc_key(tenant, document_id))
        return int(raw) if raw else 0

    async def set_chunks(self, tenant: str, document_id: str, count: int) -> None:
        """Record how many chunks ``document_id`` has now (0: deleted, the record goes)."""
        async with redis_errors("chunk count"):
            if count:
                await self.redis.set(self._doc_key(tenant, document_id), count)
            else:
                await self.redis.delete(self._doc_key(tenant, document_id))

    async def discard(self, entry: Entry) -> None:
        """Acknowledge and delete an entry that names no job it could be counted in."""
        async with redis_errors("discard"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, entry.entry_id)
                pipe.xdel(self.stream, entry.entry_id)
                await pipe.execute()

    async def finish(
        self, entry: Entry, ok: bool, chunks: int, error: str = "", index_version: int = 0
    ) -> None:
        """Count the document once in its job (with the index version its writes reached)
        and acknowledge the entry, atomically."""
        key = self._job_key(entry.job_id)
        async with redis_errors("job progress"):
            if not ok and entry.seq >= 0 and not entry.delete:
                failed = {
                    "document_id": entry.document.document_id,
                    "error": error.removeprefix(f"{entry.document.document_id}: ")[:500],
                    "body": entry.body,
                }
                await self.redis.hset(f"{key}:failed", str(entry.seq), json.dumps(failed))
                await self.redis.expire(f"{key}:failed", self.ttl)
            await self._finish(
                keys=[key, f"{key}:finished", self.stream],
                args=[
                    entry.seq if entry.seq >= 0 else entry.entry_id,  # counted once either way
                    "1" if ok else "0",
                    chunks,
                    error[:500],
                    GROUP,
                    entry.entry_id,
                    self.ttl,
                    index_version,
                ],
            )
