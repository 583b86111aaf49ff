"""The generation service logic above every engine. No grpc here.

Validation, the prompt and its token budget (:mod:`ragmesh.generation.prompt`), stop
sequences, ``max_tokens``, the safety filter, usage and finish reason, the concurrency cap,
and aborting the engine whenever a stream ends before the engine finished (client cancel,
stop sequence, filter, length, error).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from prometheus_client import Counter, Gauge, Histogram

from ragmesh.generation.engine import Engine, EngineRequest, Source
from ragmesh.generation.prompt import fit
from ragmesh.generation.untrusted import neutralize
from ragmesh.kit import callcontext
from ragmesh.kit.config import GenerationSettings
from ragmesh.kit.domain import Delta, Done, Embedded, Finish, Hit, Params, validate_params
from ragmesh.kit.errors import InvalidArgument, Overloaded
from ragmesh.kit.tracing import tracer

TTFT = Histogram(
    "ragmesh_generation_time_to_first_token_seconds",
    "Seconds from the start of a Generate to its first non-empty delta.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TOKENS = Counter("ragmesh_generation_tokens_total", "Tokens generated.", ["kind"])
FINISHED = Counter("ragmesh_generation_finished_total", "Generations by finish reason.", ["reason"])
ACTIVE = Gauge(
    "ragmesh_generation_streams_active",
    "Generate streams in flight (at most RAGMESH_GEN_MAX_STREAMS): the serving signal the "
    "autoscaler scales on.",
)


def engine_request_id() -> str:
    """The engine's id of one generation: the mesh's x-request-id, made unique per call
    (a caller may reuse a request id; engines such as vLLM refuse duplicates in flight)."""
    suffix = uuid.uuid4().hex[:8]
    ctx = callcontext.current()
    return f"{ctx.request_id}-{suffix}" if ctx is not None else uuid.uuid4().hex


class SafetyFilter:
    """A blocklist hook: whole-word, case-insensitive terms."""

    def __init__(self, terms: Sequence[str]) -> None:
        self.terms = tuple(terms)
        self._pattern = (
            re.compile("|".join(rf"\b{re.escape(t)}\b" for t in self.terms), re.IGNORECASE)
            if self.terms
            else None
        )
        self.holdback = max((len(t) for t in self.terms), default=0)

    def first_hit(self, text: str, final: bool) -> int | None:
        """Start of the first blocked term in ``text``; a match touching the end of a text
        that is still growing does not count yet (the word may go on)."""
        if self._pattern is None:
            return None
        for m in self._pattern.finditer(text):
            if final or m.end() < len(text):
                return m.start()
        return None


class _Gate:
    """Holds back just enough text to apply stop sequences and the filter before release."""

    def __init__(self, stop: Sequence[str], safety: SafetyFilter) -> None:
        self.stop = tuple(stop)
        self.safety = safety
        self.hold = max([len(s) for s in self.stop] + [safety.holdback]) if self else 0
        self.text = ""  # everything the engine produced, after the last stop point
        self.released = 0
        self.bounds: list[int] = []  # piece ends not yet released: deltas stay token-aligned

    def __bool__(self) -> bool:
        return bool(self.stop) or self.safety.holdback > 0

    def feed(self, piece: str, final: bool = False) -> tuple[str, Finish | None]:
        self.text += piece
        self.bounds.append(len(self.text))
        end, finish = len(self.text), None
        hits = [i for i in (self.text.find(s, self.released) for s in self.stop) if i >= 0]
        if hits:
            end, finish, final = min(hits), Finish.STOP, True
            self.text = self.text[:end]
        blocked = self.safety.first_hit(self.text, final)
        if blocked is not None:  # release what came before the term, never the term
            out = self.text[self.released : max(self.released, blocked)]
            self.released = len(self.text)
            return out, Finish.CONTENT_FILTER
        if not final:
            safe = [b for b in self.bounds if b <= len(self.text) - self.hold]
            end = max([self.released, *safe])
        self.bounds = [b for b in self.bounds if b > end]
        out = self.text[self.released : end]
        self.released = end
        return out, finish


class GenerationService:
    """Runs one engine for many concurrent streams."""

    def __init__(
        self, settings: GenerationSettings, engine: Engine, first_token_delay: float = 0.0
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.first_token_delay = first_token_delay  # injected fault, 0 in real deployments
        self.safety = SafetyFilter(settings.blocklist)
        self.active = 0

    def validate(self, question: str, passages: Sequence[Hit], params: Params) -> int:
        """Check a request; returns the effective max_tokens."""
        if not question.strip():
            raise InvalidArgument("question", "must not be empty")
        if len(question) > self.settings.max_question_chars:
            raise InvalidArgument(
                "question",
                f"{len(question)} characters exceed the limit of "
                f"{self.settings.max_question_chars}",
            )
        if len(passages) > self.settings.max_passages:
            raise InvalidArgument(
                "passages", f"{len(passages)} exceed the limit of {self.settings.max_passages}"
            )
        validate_params(params, max_tokens=self.settings.max_tokens)
        return params.max_tokens or self.settings.default_max_tokens

    async def generate(
        self,
        question: str,
        passages: Sequence[Hit],
        params: Params,
        question_vector: Embedded | None = None,
    ) -> AsyncIterator[Delta | Done]:
        """Stream deltas, then one :class:`Done`."""
        max_tokens = self.validate(question, passages, params)
        if self.active >= self.settings.max_streams:
            raise Overloaded(f"{self.active} generations in flight")
        model = self.engine.model_name
        if self.safety.first_hit(question, final=True) is not None:
            FINISHED.labels(Finish.CONTENT_FILTER.name).inc()
            yield Done(Finish.CONTENT_FILTER, 0, 0, model)
            return
        budget = min(self.engine.context_tokens, self.settings.context_tokens) - max_tokens
        with tracer.start_as_current_span("generation.prompt") as span:
            rendered = fit(
                question,
                # a blank passage has nothing to quote: skipped, the others keep their numbers
                [
                    Source(i + 1, neutralize(p.text), neutralize(p.metadata.get("title", "")))
                    for i, p in enumerate(passages)
                    if p.text.strip()
                ],
                budget,
                self.engine.count_tokens,
                self.engine.truncate,
            )
            span.set_attributes(
                {
                    "ragmesh.prompt.tokens": rendered.tokens,
                    "ragmesh.prompt.sources": len(rendered.sources),
                    "ragmesh.prompt.budget_tokens": budget,
                }
            )
        request = EngineRequest(
            request_id=engine_request_id(),
            prompt=rendered.prompt,
            question=question,
            sources=rendered.sources,
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p or 1.0,
            seed=params.seed,
            question_vector=question_vector,
        )
        self.active += 1
        ACTIVE.set(self.active)
        started, first = time.perf_counter(), True
        gate = _Gate(params.stop, self.safety)
        tokens, finish, engine_done = 0, None, False
        # not made current: the stream may be closed from another context
        span = tracer.start_span(
            "generation.generate",
            attributes={
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": max_tokens,
                "ragmesh.engine.request_id": request.request_id,
            },
        )
        try:
            async with contextlib.aclosing(self.engine.generate(request)) as pieces:
                async for piece in pieces:
                    tokens += piece.tokens
                    out, finish = gate.feed(piece.text)
                    if out:
                        if first:
                            if self.first_token_delay:  # RAGMESH_FAULT_DELAY_MS
                                await asyncio.sleep(self.first_token_delay)
                            TTFT.observe(time.perf_counter() - started)
                            span.add_event("first_token")
                            first = False
                        yield Delta(out)
                    if finish is None and tokens >= max_tokens:
                        finish = Finish.LENGTH
                    if finish is not None:
                        break
                else:
                    engine_done = True
            if finish in (None, Finish.LENGTH):  # release what the gate still holds
                out, late = gate.feed("", final=True)
                if out:
                    yield Delta(out)
                finish = late or finish or Finish.STOP
            TOKENS.labels("prompt").inc(rendered.tokens)
            TOKENS.labels("completion").inc(tokens)
            FINISHED.labels(finish.name).inc()
            yield Done(finish, rendered.tokens, tokens, model)
        finally:
            self.active -= 1
            ACTIVE.set(self.active)
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": rendered.tokens,
                    "gen_ai.usage.output_tokens": tokens,
                    "gen_ai.response.finish_reasons": [finish.name if finish else "ABORTED"],
                }
            )
            span.end()
            if not engine_done:
                await self.engine.abort(request.request_id)
