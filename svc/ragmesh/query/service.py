"""Ask: validate → embed the question (cached) → search → answer cache → stream. No grpc here.

The stream always has the same shape: one :class:`Citations`, the answer's deltas, one
:class:`AskDone`. A cache hit replays the stored citations and deltas.

Everything runs in the caller's tenant (:func:`caller_tenant`): the search, both caches'
keys, the documents it ingests or deletes and the jobs it may read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import asdict, replace

import numpy as np
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from ragmesh.kit import callcontext
from ragmesh.kit.callcontext import ROUTING_KEYS
from ragmesh.kit.config import QuerySettings
from ragmesh.kit.domain import (
    NO_ANSWER,
    AskDone,
    AskInput,
    Citation,
    Citations,
    Delta,
    DocumentIn,
    Done,
    Embedded,
    Finish,
    Matrix,
    Outcome,
    Purpose,
    Timings,
    document_problem,
    is_job_id,
    validate_params,
)
from ragmesh.kit.errors import (
    InvalidArgument,
    Overloaded,
    PermissionDenied,
    QuotaExceeded,
    quoted,
)
from ragmesh.kit.peers import Embedder, Generator, Retriever
from ragmesh.kit.text import groundedness
from ragmesh.kit.tracing import tracer
from ragmesh.query.admission import ADMISSIONS, BUSY, Admission, SingleFlight
from ragmesh.query.budget import TokenBudget
from ragmesh.query.cache import LOOKUPS, Cache

log = logging.getLogger(__name__)
SNIPPET_CHARS = 240
TTFT = Histogram(
    "ragmesh_query_time_to_first_token_seconds",
    "Seconds from the start of an Ask to its first answer delta.",
    ["cache_hit"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


ANSWERS = Counter(
    "ragmesh_answers_total",
    "Ask answers by outcome: answered from the documents, no_answer (no passage reached "
    "RAGMESH_ANSWER_MIN_RELEVANCE), or filtered (withheld by the safety filter).",
    ["outcome"],
)
for _outcome in Outcome:
    ANSWERS.labels(_outcome.name.lower())
GROUNDEDNESS = Histogram(
    "ragmesh_answer_groundedness",
    "Share of an answer's sentences supported by a cited passage (answered outcomes).",
    buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
)


def counted(done: AskDone) -> AskDone:
    """Count an answer's outcome (and its groundedness) as it is sent."""
    ANSWERS.labels(done.outcome.name.lower()).inc()
    if done.outcome is Outcome.ANSWERED:
        GROUNDEDNESS.observe(done.groundedness)
    return done


def normalize(question: str) -> str:
    """The cache form of a question: case-folded, whitespace collapsed."""
    return " ".join(question.casefold().split())


def caller_tenant(default: str) -> str:
    """The tenant of the call being served: the one the ingress gateway verified
    (x-ragmesh-tenant, from the token), else ``default`` (RAGMESH_DEFAULT_TENANT) for the
    mesh's own callers. PermissionDenied when the verified claim is no tenant name, or when
    there is neither."""
    ctx = callcontext.current()
    if ctx is not None and ctx.tenant_malformed:
        raise PermissionDenied("the token's tenant claim is not a valid tenant name")
    tenant = ctx.tenant if ctx is not None and ctx.tenant else default
    if not tenant:
        raise PermissionDenied("the call carries no verified tenant")
    return tenant


def _routing() -> list[tuple[str, str]]:
    """The call's routing headers (x-ragmesh-canary): part of the answer cache's and the
    single flight's keys, so an Ask for the generation canary never shares the primary's
    answer (nor the other way round)."""
    ctx = callcontext.current()
    return sorted((k, v) for k, v in (ctx.headers if ctx is not None else ()) if k in ROUTING_KEYS)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


class AskPipeline:
    """The front door's question answering over peer protocols."""

    def __init__(
        self,
        settings: QuerySettings,
        embedder: Embedder,
        retriever: Retriever,
        generator: Generator,
        cache: Cache,
        first_token_delay: float = 0.0,
        budget: TokenBudget | None = None,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.first_token_delay = first_token_delay  # injected fault, 0 in real deployments
        self.embedder = embedder
        self.retriever = retriever
        self.generator = generator
        self.cache = cache
        self.admission = Admission(
            settings.max_asks, settings.admission_wait_ms / 1000, settings.max_queued
        )
        self.flights: SingleFlight[Citations | Delta | AskDone] = SingleFlight()
        self.embed_model = ""  # learned from the embedding service's replies
        self.generation_model = ""  # learned from the generation service's replies

    def validate(self, request: AskInput) -> int:
        """Check a request; returns the effective top_k."""
        q = request.question
        if not q.strip():
            raise InvalidArgument("question", "must not be empty")
        if len(q) > self.settings.max_question_chars:
            raise InvalidArgument(
                "question",
                f"{len(q)} characters exceed the limit of {self.settings.max_question_chars}",
            )
        if request.top_k > self.settings.max_top_k:
            raise InvalidArgument(
                "top_k", f"{request.top_k} exceeds the limit of {self.settings.max_top_k}"
            )
        for key in request.filter:
            if not key:
                raise InvalidArgument("filter", "keys must not be empty")
        validate_params(request.params)
        return request.top_k or self.settings.default_top_k

    async def _lookup(self, cache: str, key: str) -> bytes | None:
        """One cache read, counted and traced as a ``cache.lookup`` span."""
        with tracer.start_as_current_span("cache.lookup") as span:
            value = await self.cache.get(key)
            result = "hit" if value is not None else "miss"
            span.set_attributes({"ragmesh.cache": cache, "ragmesh.cache.result": result})
        LOOKUPS.labels(cache, result).inc()
        return value

    async def _embed(self, tenant: str, question: str) -> Matrix:
        # keyed by tenant too: a hit must not tell one tenant what another asked
        digest = hashlib.sha256(question.encode()).hexdigest()
        cached_too = self.settings.embed_cache_ttl > 0
        if cached_too and self.embed_model:  # the model is known after the first reply
            key = f"ragmesh:emb:{tenant}:{self.embed_model}:{digest}"
            cached = await self._lookup("embedding", key)
            if cached is not None:
                return np.frombuffer(cached, dtype="<f4")
        embedded = await self.embedder.embed([question], Purpose.QUERY)
        vector = np.ascontiguousarray(embedded.vectors[0], dtype="<f4")
        self.embed_model = embedded.model
        if cached_too:
            key = f"ragmesh:emb:{tenant}:{self.embed_model}:{digest}"
            await self.cache.set(key, vector.tobytes(), self.settings.embed_cache_ttl)
        return vector

    def _answer_key(self, tenant: str, request: AskInput, top_k: int, index_version: int) -> str:
        p = request.params
        material = json.dumps(
            {
                "tenant": tenant,
                "q": normalize(request.question),
                "top_k": top_k,
                "filter": sorted(request.filter.items()),
                "params": [p.max_tokens, p.temperature, p.top_p, list(p.stop), p.seed],
                "index": index_version,
                "model": self.generation_model,
                "routing": _routing(),  # the canary's answers are its own
            },
            sort_keys=True,
        )
        return "ragmesh:ans:" + hashlib.sha256(material.encode()).hexdigest()

    async def ask(self, request: AskInput) -> AsyncGenerator[Citations | Delta | AskDone, None]:
        """Answer one question as a stream of events: admitted first (admission.py), or
        shared with an identical Ask already in flight."""
        started = time.perf_counter()
        top_k = self.validate(request)
        tenant = caller_tenant(self.settings.default_tenant)
        key = self._flight_key(tenant, request, top_k)
        flight = self.flights.join(key)
        if flight is not None:
            events = await SingleFlight.follow(flight)
            if events is not None:
                ADMISSIONS.labels("shared").inc()
                async for shared in self._share(events, started):
                    yield shared
                return
        # in flight from now on, while it waits for its slot too: identical Asks join it
        with self.flights.lead(key) as flight:
            async with self.admission.slot():
                try:
                    async for event in self._compute(request, top_k, tenant, started):
                        flight.events.append(event)
                        if isinstance(event, AskDone):  # complete: followers need not wait on
                            flight.done.set_result(None)
                        yield event
                except Overloaded as e:  # a service behind the front door: say it simply
                    if isinstance(e, QuotaExceeded):
                        raise
                    log.warning("ask refused: %s", e)
                    raise Overloaded(BUSY) from None

    def _flight_key(self, tenant: str, request: AskInput, top_k: int) -> str:
        p = request.params
        return json.dumps(
            [
                tenant,
                _routing(),
                normalize(request.question),
                top_k,
                sorted(request.filter.items()),
                [p.max_tokens, p.temperature, p.top_p, list(p.stop), p.seed],
                request.min_index_version,
                request.skip_cache,
            ]
        )

    async def _share(
        self, events: list[Citations | Delta | AskDone], started: float
    ) -> AsyncIterator[Citations | Delta | AskDone]:
        """A leader's events, as this Ask's: its own timings, counted as an answer."""
        first_ms = 0.0
        for event in events:
            if isinstance(event, AskDone):
                t = event.timings
                timings = Timings(t.embed_ms, t.search_ms, first_ms, _ms(started))
                yield counted(replace(event, timings=timings))
            else:
                if isinstance(event, Delta) and not first_ms:
                    first_ms = _ms(started)
                yield event

    async def _compute(
        self, request: AskInput, top_k: int, tenant: str, started: float
    ) -> AsyncGenerator[Citations | Delta | AskDone, None]:
        """Embed, search, answer (or replay the cached answer)."""
        t = time.perf_counter()
        vector = await self._embed(tenant, request.question)
        embed_ms = _ms(t)
        t = time.perf_counter()
        result = await self.retriever.search(
            tenant,
            vector,
            top_k,
            request.filter,
            request.min_index_version,
            self.embed_model,
            request.question,
        )
        search_ms = _ms(t)
        if not result.hits or max(h.score for h in result.hits) < self.settings.min_relevance:
            for event in self._no_answer(started, embed_ms, search_ms, result.index_version):
                yield event
            return
        use_cache = not request.skip_cache and self.settings.answer_cache_ttl > 0
        key = ""
        if use_cache and self.generation_model:
            key = self._answer_key(tenant, request, top_k, result.index_version)
            stored = await self._lookup("answer", key)
            if stored is not None:
                async for replayed in self._replay(stored, started, embed_ms, search_ms):
                    yield replayed
                return
        ctx = callcontext.current()
        verified = ctx.tenant if ctx is not None else ""  # budgets are for users' tenants
        if self.budget is not None:  # before anything streams: a refusal is the whole answer
            await self.budget.check(verified)
        citations = tuple(
            Citation(
                i + 1,
                h.chunk_id,
                h.document_id,
                h.score,
                h.text[:SNIPPET_CHARS],
                dict(h.metadata),
            )
            for i, h in enumerate(result.hits)
        )
        yield Citations(citations)
        deltas: list[str] = []
        first_ms = 0.0
        done: Done | None = None
        stream = self.generator.generate(
            request.question,
            result.hits,
            request.params,
            Embedded(vector.reshape(1, -1), self.embed_model) if self.embed_model else None,
        )
        async for generated in stream:
            if isinstance(generated, Delta):
                if not deltas:
                    if self.first_token_delay:  # RAGMESH_FAULT_DELAY_MS
                        await asyncio.sleep(self.first_token_delay)
                    first_ms = _ms(started)
                    TTFT.labels("false").observe(first_ms / 1000.0)
                    trace.get_current_span().add_event("first_token")
                deltas.append(generated.text)
                yield generated
            else:
                done = generated
        if done is None:
            raise RuntimeError("generation stream ended without done")
        answer = "".join(deltas)
        outcome = Outcome.ANSWERED
        if done.finish is Finish.CONTENT_FILTER:
            outcome = Outcome.FILTERED
        elif answer.strip() == NO_ANSWER:  # the engine found nothing to say in the passages
            outcome = Outcome.NO_ANSWER
        grounded = groundedness(answer, [h.text for h in result.hits])
        if self.budget is not None:
            await self.budget.charge(verified, done.completion_tokens)
        if use_cache:
            if done.model != self.generation_model:
                self.generation_model = done.model
                key = self._answer_key(tenant, request, top_k, result.index_version)
            value = {
                "citations": [asdict(c) for c in citations],
                "deltas": deltas,
                "finish": done.finish.name,
                "usage": [done.prompt_tokens, done.completion_tokens],
                "index_version": result.index_version,
                "outcome": outcome.name,
                "groundedness": grounded,
            }
            await self.cache.set(key, json.dumps(value).encode(), self.settings.answer_cache_ttl)
        yield counted(
            AskDone(
                done.finish,
                done.prompt_tokens,
                done.completion_tokens,
                Timings(embed_ms, search_ms, first_ms, _ms(started)),
                False,
                result.index_version,
                outcome,
                grounded,
            )
        )

    def _no_answer(
        self, started: float, embed_ms: float, search_ms: float, index_version: int
    ) -> list[Citations | Delta | AskDone]:
        """The answer when no passage reaches RAGMESH_ANSWER_MIN_RELEVANCE: it says so and
        cites nothing; no generation runs (nor spends a token budget)."""
        first_ms = _ms(started)
        TTFT.labels("false").observe(first_ms / 1000.0)
        done = AskDone(
            Finish.STOP,
            0,
            0,
            Timings(embed_ms, search_ms, first_ms, _ms(started)),
            False,
            index_version,
            Outcome.NO_ANSWER,
            0.0,
        )
        return [Citations(()), Delta(NO_ANSWER), counted(done)]

    async def _replay(
        self, stored: bytes, started: float, embed_ms: float, search_ms: float
    ) -> AsyncIterator[Citations | Delta | AskDone]:
        value = json.loads(stored)
        yield Citations(tuple(Citation(**c) for c in value["citations"]))
        first_ms = 0.0
        for i, text in enumerate(value["deltas"]):
            if i == 0:
                first_ms = _ms(started)
                TTFT.labels("true").observe(first_ms / 1000.0)
                trace.get_current_span().add_event("first_token", {"ragmesh.cache_hit": True})
            yield Delta(text)
        prompt_tokens, completion_tokens = value["usage"]
        yield counted(
            AskDone(
                Finish[value["finish"]],
                prompt_tokens,
                completion_tokens,
                Timings(embed_ms, search_ms, first_ms, _ms(started)),
                True,
                value["index_version"],
                Outcome[value.get("outcome", "ANSWERED")],
                value.get("groundedness", 0.0),
            )
        )


def validate_job_id(job_id: str) -> None:
    """Raise InvalidArgument unless ``job_id`` has the form Ingest hands out."""
    if not job_id:
        raise InvalidArgument("job_id", "must not be empty")
    if not is_job_id(job_id):
        raise InvalidArgument("job_id", "must be the 32 lowercase hex digits Ingest returned")


def validate_documents(docs: Sequence[DocumentIn], max_documents: int, max_chars: int) -> None:
    """Raise InvalidArgument naming the first bad field of an Ingest request."""
    if not docs:
        raise InvalidArgument("documents", "at least one document is required")
    if len(docs) > max_documents:
        raise InvalidArgument("documents", f"{len(docs)} exceed the limit of {max_documents}")
    seen: set[str] = set()
    for i, d in enumerate(docs):
        found = document_problem(d)
        if found is not None:
            raise InvalidArgument(f"documents[{i}].{found[0]}", found[1])
        if d.document_id in seen:
            raise InvalidArgument(
                f"documents[{i}].document_id", f"duplicate id {quoted(d.document_id)}"
            )
        seen.add(d.document_id)
        if len(d.text) > max_chars:
            raise InvalidArgument(
                f"documents[{i}].text", f"{len(d.text)} characters exceed the limit of {max_chars}"
            )
        if len(d.content) > max_chars:
            raise InvalidArgument(
                f"documents[{i}].content", f"{len(d.content)} bytes exceed the limit of {max_chars}"
            )
