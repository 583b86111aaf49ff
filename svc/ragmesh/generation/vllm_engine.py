"""The ``vllm`` engine: vLLM's in-process async engine, for GPU nodes.

Written against vLLM's async engine API (``AsyncLLMEngine`` / ``AsyncLLM``):
``generate(prompt, SamplingParams, request_id)`` yields cumulative ``RequestOutput`` s,
``abort(request_id)`` stops a request, ``check_health()`` raises when the engine is dead,
``get_tokenizer()`` returns the Hugging Face tokenizer. vLLM is an optional extra
(``pip install ragmesh[vllm]``), imported only when this engine is selected; tests pass an
object with those methods as ``client`` and a ``sampling_params`` factory.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from ragmesh.generation.engine import CHAT_TEMPLATE_TOKENS, EngineRequest, HfTokenCounting, Piece
from ragmesh.kit.errors import ConfigError, DependencyUnavailable, NotReady


class VllmEngine(HfTokenCounting):
    """Adapter from the engine protocol to a vLLM async engine client."""

    def __init__(
        self,
        model_dir: str,
        context_tokens: int,
        *,
        client: Any = None,
        sampling_params: Callable[..., Any] | None = None,
    ) -> None:
        self._dir = model_dir
        self._context = context_tokens
        self._client = client
        self._sampling_params = sampling_params
        self._tokenizer: Any = None

    @property
    def model_name(self) -> str:
        return f"vllm/{Path(self._dir).name}"

    @property
    def context_tokens(self) -> int:
        return self._context - (CHAT_TEMPLATE_TOKENS if self.has_chat_template() else 0)

    async def load(self) -> None:
        if self._client is None:
            try:
                from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            except ImportError as e:
                raise ConfigError(
                    "RAGMESH_GEN_ENGINE=vllm needs the vllm extra: pip install 'ragmesh[vllm]'"
                ) from e
            args = AsyncEngineArgs(model=self._dir, max_model_len=self._context)
            self._client = AsyncLLMEngine.from_engine_args(args)
            self._sampling_params = SamplingParams
        tokenizer = self._client.get_tokenizer()
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer

    async def generate(self, request: EngineRequest) -> AsyncGenerator[Piece, None]:
        if self._client is None or self._sampling_params is None:
            raise NotReady("vllm engine not loaded")
        params = self._sampling_params(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
        )
        text, tokens = "", 0
        prompt = self.prompt_for(request)
        async for output in self._client.generate(prompt, params, request.request_id):
            completion = output.outputs[0]
            new_tokens = len(completion.token_ids) - tokens
            delta = completion.text[len(text) :]
            text, tokens = completion.text, len(completion.token_ids)
            if delta or new_tokens:
                yield Piece(delta, new_tokens)
            if output.finished:
                return

    async def abort(self, request_id: str) -> None:
        if self._client is not None:
            await self._client.abort(request_id)

    async def health(self) -> bool:
        if self._client is None:
            return False
        try:
            await self._client.check_health()
        except Exception as e:
            raise DependencyUnavailable(f"vllm engine unhealthy: {e}") from e
        return True

    async def close(self) -> None:
        shutdown = getattr(self._client, "shutdown", None)
        if callable(shutdown):
            result = shutdown()
            if inspect.isawaitable(result):
                await result
