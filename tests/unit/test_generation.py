"""The generation service above the engines, with a scripted fake engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest
from prometheus_client import REGISTRY

from ragmesh.generation.engine import EngineRequest, Piece
from ragmesh.generation.service import GenerationService
from ragmesh.kit.domain import Delta, Done, Finish, Hit, Params
from ragmesh.kit.errors import InvalidArgument, Overloaded
from tests.conftest import settings_for


class ScriptedEngine:
    """Yields the given pieces (or forever); counts tokens and records aborts."""

    model_name = "fake/scripted"

    def __init__(self, pieces: Sequence[str] | None, context: int = 4096) -> None:
        self.pieces = pieces
        self.context_tokens = context
        self.requests: list[EngineRequest] = []
        self.aborted: list[str] = []
        self.produced = 0
        self.gate: asyncio.Event | None = None

    async def load(self) -> None:
        return None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def truncate(self, text: str, max_tokens: int) -> str:
        return " ".join(text.split()[:max_tokens])

    async def generate(self, request: EngineRequest) -> AsyncGenerator[Piece, None]:
        self.requests.append(request)
        i = 0
        while self.pieces is None or i < len(self.pieces):
            if self.gate is not None:
                await self.gate.wait()
            if request.request_id in self.aborted:
                return
            self.produced += 1
            yield Piece("tok " if self.pieces is None else self.pieces[i], 1)
            i += 1
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def service(engine: ScriptedEngine, **env: str) -> GenerationService:
    return GenerationService(settings_for(**env).generation, engine)


async def collect(svc: GenerationService, question: str = "why?", **kw: object) -> tuple[str, Done]:
    passages = kw.pop("passages", [Hit("d#0", "d", "some passage text")])
    params = Params(**kw)  # type: ignore[arg-type]
    text, done = "", None
    async for event in svc.generate(question, passages, params):  # type: ignore[arg-type]
        if isinstance(event, Delta):
            text += event.text
        else:
            done = event
    assert done is not None
    return text, done


async def test_stop_sequence_split_across_pieces_is_cut_and_never_sent() -> None:
    engine = ScriptedEngine(["The answer", " is 42.\n\nQues", "tion: more", " text"])
    text, done = await collect(service(engine), stop=("\n\nQuestion:",))
    assert text == "The answer is 42."
    assert done.finish is Finish.STOP
    assert done.completion_tokens == 3
    assert engine.aborted == [engine.requests[0].request_id]  # the engine was told to stop


async def test_max_tokens_ends_with_length_and_usage() -> None:
    engine = ScriptedEngine(None)
    text, done = await collect(service(engine), max_tokens=5)
    assert text == "tok " * 5
    assert (done.finish, done.completion_tokens) == (Finish.LENGTH, 5)
    assert done.prompt_tokens == engine.count_tokens(engine.requests[0].prompt)
    assert engine.requests[0].max_tokens == 5


async def test_natural_end_is_stop_and_no_abort() -> None:
    engine = ScriptedEngine(["a", " b"])
    text, done = await collect(service(engine))
    assert (text, done.finish) == ("a b", Finish.STOP)
    assert engine.aborted == []


async def test_blocklisted_answer_ends_with_content_filter_before_the_term() -> None:
    engine = ScriptedEngine(["Mix the ", "sec", "ret sauce", " then serve"])
    text, done = await collect(service(engine, RAGMESH_GEN_BLOCKLIST="secret, forbidden"))
    assert done.finish is Finish.CONTENT_FILTER
    assert text == "Mix the "


async def test_blocklist_is_whole_word() -> None:
    engine = ScriptedEngine(["secretary ", "notes"])
    text, done = await collect(service(engine, RAGMESH_GEN_BLOCKLIST="secret"))
    assert (text, done.finish) == ("secretary notes", Finish.STOP)


async def test_blocklisted_question_never_reaches_the_engine() -> None:
    engine = ScriptedEngine(["x"])
    text, done = await collect(service(engine, RAGMESH_GEN_BLOCKLIST="forbidden"), "a FORBIDDEN q")
    assert (text, done.finish, engine.requests) == ("", Finish.CONTENT_FILTER, [])


async def test_token_budget_truncates_passages_never_the_question() -> None:
    engine = ScriptedEngine(["ok"], context=400)
    long = " ".join(f"w{i}" for i in range(300))
    passages = [Hit("a#0", "a", long), Hit("b#0", "b", "second passage " * 50)]
    svc = service(engine, RAGMESH_GEN_DEFAULT_MAX_TOKENS="100")
    question = "what is " + "really " * 20 + "asked?"
    _, done = await collect(svc, question, passages=passages)
    req = engine.requests[0]
    assert question in req.prompt
    assert done.prompt_tokens <= 400 - 100
    assert req.sources[0].marker == 1 and len(req.sources) == 1
    assert 16 <= engine.count_tokens(req.sources[0].text) < 300
    with pytest.raises(InvalidArgument, match="^question: .*context budget"):
        await collect(svc, "why " * 350)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"max_tokens": 5000}, "params.max_tokens"),
        ({"temperature": 3.0}, "params.temperature"),
        ({"top_p": 1.5}, "params.top_p"),
        ({"stop": ("",)}, "params.stop[0]"),
        ({"stop": ("a", "b", "c", "d", "e")}, "params.stop"),
    ],
)
async def test_bad_params_name_the_field(kw: dict[str, object], field: str) -> None:
    engine = ScriptedEngine(["x"])
    with pytest.raises(InvalidArgument) as e:
        await collect(service(engine), **kw)
    assert e.value.field == field and engine.requests == []


async def test_an_empty_question_is_invalid_and_a_blank_passage_is_skipped() -> None:
    svc = service(ScriptedEngine(["x"]))
    with pytest.raises(InvalidArgument, match="^question:"):
        await collect(svc, "  ")
    await collect(svc, passages=[Hit("a", "a", " ")])  # answered, from no passage


async def test_concurrency_cap_rejects_with_overloaded() -> None:
    engine = ScriptedEngine(None)
    engine.gate = asyncio.Event()
    svc = service(engine, RAGMESH_GEN_MAX_STREAMS="1")
    first = svc.generate("q", [Hit("a", "a", "text here")], Params(max_tokens=3))
    pending = asyncio.ensure_future(first.__anext__())
    await asyncio.sleep(0)
    assert svc.active == 1
    # the serving signal KEDA scales generation on (rollouts/generation: streams in flight)
    assert REGISTRY.get_sample_value("ragmesh_generation_streams_active") == 1
    with pytest.raises(Overloaded):
        await collect(svc)
    engine.gate.set()
    await pending
    await first.aclose()
    assert svc.active == 0
    assert REGISTRY.get_sample_value("ragmesh_generation_streams_active") == 0


async def test_consumer_closing_the_stream_aborts_the_engine_and_stops_tokens() -> None:
    engine = ScriptedEngine(None)
    svc = service(engine)
    stream = svc.generate("q", [Hit("a", "a", "text here")], Params(max_tokens=1000))
    for _ in range(3):
        await stream.__anext__()
    await stream.aclose()  # what a cancelled RPC does to the handler's generator
    produced = engine.produced
    assert engine.aborted == [engine.requests[0].request_id]
    assert produced <= 4 and svc.active == 0
