"""The vllm adapter against an object implementing the vLLM async-engine methods it calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ragmesh.generation.engine import EngineRequest
from ragmesh.generation.service import GenerationService
from ragmesh.generation.vllm_engine import VllmEngine
from ragmesh.kit.domain import Delta, Done, Finish, Hit, Params
from ragmesh.kit.errors import DependencyUnavailable
from tests.conftest import settings_for


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool


class WordTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [len(w) for w in text.split()]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join("x" * i for i in ids)


@dataclass
class FakeAsyncLLM:
    """generate(prompt, sampling_params, request_id) yields cumulative outputs, like vLLM."""

    words: list[str]
    calls: list[tuple[str, Any, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    produced: int = 0
    healthy: bool = True

    async def get_tokenizer(self) -> WordTokenizer:
        return WordTokenizer()

    async def generate(
        self, prompt: str, sampling_params: Any, request_id: str
    ) -> AsyncGenerator[RequestOutput, None]:
        self.calls.append((prompt, sampling_params, request_id))
        text, ids = "", []
        limit = min(len(self.words), sampling_params["max_tokens"])
        for i, word in enumerate(self.words[:limit]):
            if request_id in self.aborted:
                return
            text += ("" if i == 0 else " ") + word
            ids.append(i)
            self.produced += 1
            yield RequestOutput(request_id, [CompletionOutput(text, list(ids))], i == limit - 1)
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


def sampling_params(**kw: Any) -> dict[str, Any]:
    return kw


async def loaded(llm: FakeAsyncLLM) -> VllmEngine:
    engine = VllmEngine("/models/tiny-chat", 4096, client=llm, sampling_params=sampling_params)
    await engine.load()
    return engine


async def test_adapter_turns_cumulative_outputs_into_deltas_and_passes_sampling_params() -> None:
    llm = FakeAsyncLLM(["Six", "o'clock", "[1]."])
    engine = await loaded(llm)
    request = EngineRequest("req-1", "PROMPT", "q", (), 16, 0.7, 0.9, 42)
    pieces = [p async for p in engine.generate(request)]
    assert [p.text for p in pieces] == ["Six", " o'clock", " [1]."]
    assert [p.tokens for p in pieces] == [1, 1, 1]
    prompt, params, request_id = llm.calls[0]
    assert (prompt, request_id) == ("PROMPT", "req-1")
    assert params == {"max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 42}
    assert engine.model_name == "vllm/tiny-chat"
    assert engine.count_tokens("a bb ccc") == 3 and engine.truncate("a bb ccc", 2) == "x xx"


async def test_service_stop_sequence_aborts_the_vllm_request() -> None:
    llm = FakeAsyncLLM(["one", "two", "STOP", "three", "four"])
    service = GenerationService(settings_for().generation, await loaded(llm))
    text, done = "", None
    async for event in service.generate("q?", [Hit("a", "a", "ctx")], Params(stop=("STOP",))):
        if isinstance(event, Delta):
            text += event.text
        else:
            done = event
    assert isinstance(done, Done) and done.finish is Finish.STOP
    assert text == "one two "
    assert llm.aborted == [llm.calls[0][2]]
    assert llm.produced == 3  # nothing generated after the abort


async def test_health_raises_dependency_unavailable_when_the_engine_is_dead() -> None:
    llm = FakeAsyncLLM([])
    engine = await loaded(llm)
    assert await engine.health()
    llm.healthy = False
    with pytest.raises(DependencyUnavailable):
        await engine.health()


def test_selecting_vllm_without_the_extra_fails_at_start_with_a_hint() -> None:
    from ragmesh.generation.factory import create_engine
    from ragmesh.kit.errors import ConfigError

    settings = settings_for(RAGMESH_GEN_ENGINE="vllm", RAGMESH_GEN_MODEL="/models/x")
    engine = create_engine(settings.generation, settings.embedding)
    with pytest.raises(ConfigError, match="vllm extra"):
        asyncio.run(engine.load())


class ChatTokenizer(WordTokenizer):
    """A tokenizer with a chat template, rendered the way SmolLM2's (ChatML) renders."""

    chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}...{% endfor %}"

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool
    ) -> str:
        assert not tokenize and add_generation_prompt
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"


async def test_a_model_with_a_chat_template_gets_the_chat_shaped_prompt() -> None:
    llm = FakeAsyncLLM(["Two", "flashes", "[1]."])

    async def chat_tokenizer() -> ChatTokenizer:
        return ChatTokenizer()

    llm.get_tokenizer = chat_tokenizer  # type: ignore[method-assign]
    engine = VllmEngine("/models/smol", 256, client=llm, sampling_params=sampling_params)
    await engine.load()
    assert engine.context_tokens == 256 - 48  # the template's own tokens kept aside
    service = GenerationService(settings_for().generation, engine)
    hits = [Hit("a#0", "a", "The light flashes twice.", 1.0, {})]
    async for _ in service.generate("How often?", hits, Params(max_tokens=8)):
        pass
    prompt = llm.calls[-1][0]
    assert prompt.startswith("<|im_start|>system\nAnswer the question using only")
    assert '<passage id="1">\nThe light flashes twice.\n</passage>' in prompt
    assert prompt.endswith("<|im_start|>user\nHow often?<|im_end|>\n<|im_start|>assistant\n")
