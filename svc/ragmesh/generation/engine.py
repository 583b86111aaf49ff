"""The one generation-engine protocol. No grpc here.

An engine turns an :class:`EngineRequest` into a stream of :class:`Piece` s (text plus the
number of tokens it took to produce). Prompt templating, the token budget, stop sequences,
``max_tokens`` and the safety filter live in :mod:`ragmesh.generation.service`, above
every engine. The factory is :mod:`ragmesh.generation.factory`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from ragmesh.kit.domain import Embedded
from ragmesh.kit.errors import NotReady


@dataclass(frozen=True)
class Source:
    """One context passage as the engine sees it: its citation marker and (budgeted) text."""

    marker: int
    text: str
    title: str = ""  # its document's title (metadata "title"), "" when none


@dataclass(frozen=True)
class EngineRequest:
    """One generation: the rendered prompt plus its parts, and the sampling parameters."""

    request_id: str
    prompt: str
    question: str
    sources: tuple[Source, ...]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    #: the question's embedding from the caller, when it sent one (the extractive engine
    #: reuses it when its model made it)
    question_vector: Embedded | None = None


@dataclass(frozen=True)
class Piece:
    """Newly generated text and the number of tokens it took (text may be empty)."""

    text: str
    tokens: int


class Engine(Protocol):
    """What the generation service needs from an engine."""

    @property
    def model_name(self) -> str:
        """The name reported in ``GenerateDone.model`` and used in cache keys."""

    @property
    def context_tokens(self) -> int:
        """The most prompt + completion tokens the model accepts."""

    async def load(self) -> None:
        """Load weights; the service reports NOT_SERVING until this returns."""

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in this engine's tokenizer."""

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that fits in ``max_tokens`` tokens."""

    def generate(self, request: EngineRequest) -> AsyncGenerator[Piece, None]:
        """Stream the completion; stops by itself at ``request.max_tokens``."""

    async def abort(self, request_id: str) -> None:
        """Stop producing tokens for ``request_id`` now (no-op when it already finished)."""

    async def health(self) -> bool:
        """True while the engine can serve."""

    async def close(self) -> None:
        """Release the model."""


#: context tokens an engine keeps for its chat template's own tokens (role markers), which
#: the passage budget (counted on the plain prompt) does not see
CHAT_TEMPLATE_TOKENS = 48


class HfTokenCounting:
    """count_tokens/truncate for engines with a Hugging Face tokenizer in ``_tokenizer``, and
    the prompt in the tokenizer's chat template when it has one (the plain prompt when not)."""

    _tokenizer: Any = None

    def has_chat_template(self) -> bool:
        return bool(getattr(self._tokenizer, "chat_template", None))

    def prompt_for(self, request: EngineRequest) -> str:
        """The text the model sees: the chat-shaped prompt (system: instructions and
        passages; user: the question) through the model's template, else the plain one."""
        if not self.has_chat_template():
            return request.prompt
        from ragmesh.generation.prompt import chat_messages

        return str(
            self._tokenizer.apply_chat_template(
                chat_messages(request.question, request.sources),
                tokenize=False,
                add_generation_prompt=True,
            )
        )

    def _ids(self, text: str) -> list[int]:
        if self._tokenizer is None:
            raise NotReady(f"{type(self).__name__} not loaded")
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._ids(text)
        if len(ids) <= max_tokens:
            return text
        return str(self._tokenizer.decode(ids[: max(0, max_tokens)], skip_special_tokens=True))
