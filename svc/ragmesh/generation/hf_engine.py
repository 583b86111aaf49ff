"""The ``transformers`` engine: any local Hugging Face causal-LM directory, streamed.

``model.generate`` runs in a worker thread; a streamer hands each new token id to the event
loop, and a stopping criterion checks the request's abort flag between tokens, so an
aborted request stops producing tokens at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from ragmesh.generation.engine import CHAT_TEMPLATE_TOKENS, EngineRequest, HfTokenCounting, Piece
from ragmesh.kit.encoder import pick_device
from ragmesh.kit.errors import ConfigError, NotReady

log = logging.getLogger(__name__)


class _Run:
    """One generation in flight: its token queue and abort flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        self.aborted = threading.Event()

    def push(self, item: int | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class TransformersEngine(HfTokenCounting):
    """A causal LM loaded once from a local directory."""

    def __init__(self, model_dir: str, device: str, context_tokens: int) -> None:
        self._dir = Path(model_dir)
        if not (self._dir / "config.json").is_file():
            raise ConfigError(f"RAGMESH_GEN_MODEL: {model_dir!r} is not a model directory")
        self._device_setting = device
        self._context = context_tokens
        self._tokenizer: Any = None
        self._model: Any = None
        self._runs: dict[str, _Run] = {}
        self.produced = 0  # tokens produced since start (tests assert on it)

    @property
    def model_name(self) -> str:
        return f"transformers/{self._dir.name}"

    @property
    def context_tokens(self) -> int:
        return self._context - (CHAT_TEMPLATE_TOKENS if self.has_chat_template() else 0)

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = pick_device(self._device_setting)
        self._tokenizer = AutoTokenizer.from_pretrained(self._dir, local_files_only=True)
        self._model = AutoModelForCausalLM.from_pretrained(self._dir, local_files_only=True)
        self._model.to(device).eval()
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit < self._context:
            self._context = limit
        log.info("loaded causal LM %s on %s (context %d)", self._dir, device, self._context)

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _generate(self, request: EngineRequest, run: _Run) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        engine = self

        class Streamer(BaseStreamer):
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # the first call carries the prompt
                    self.prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    engine.produced += 1
                    run.push(int(token))

            def end(self) -> None:
                run.push(None)

        class Abort(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), run.aborted.is_set(), dtype=torch.bool)

        try:
            tok = self._tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            inputs = tok(self.prompt_for(request), return_tensors="pt").to(self._model.device)
            sample = request.temperature > 0
            options: dict[str, Any] = {
                "max_new_tokens": request.max_tokens,
                "do_sample": sample,
                "streamer": Streamer(),
                "stopping_criteria": StoppingCriteriaList([Abort()]),
                "pad_token_id": pad,
            }
            floor = getattr(self._model.generation_config, "min_new_tokens", None)
            if isinstance(floor, int) and floor > request.max_tokens:
                options["min_new_tokens"] = request.max_tokens  # never past the request's cap
            if sample:
                options["temperature"] = request.temperature
                options["top_p"] = request.top_p
                if request.seed is not None:
                    torch.manual_seed(request.seed)
            with torch.inference_mode():
                self._model.generate(**inputs, **options)
        except BaseException as e:  # handed to the event loop, raised there
            run.push(e)
            run.push(None)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[Piece, None]:
        if self._model is None:
            raise NotReady("transformers engine not loaded")
        run = _Run(asyncio.get_running_loop())
        self._runs[request.request_id] = run
        thread = threading.Thread(
            target=self._generate, args=(request, run), name="generate", daemon=True
        )
        thread.start()
        ids: list[int] = []
        text = ""
        try:
            while (item := await run.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                ids.append(item)
                decoded = str(self._tokenizer.decode(ids, skip_special_tokens=True))
                if decoded.endswith("\ufffd"):  # a partial UTF-8 sequence: wait for more
                    yield Piece("", 1)
                    continue
                delta, text = decoded[len(text) :], decoded
                yield Piece(delta, 1)
        finally:
            run.aborted.set()
            self._runs.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        run = self._runs.get(request_id)
        if run is not None:
            run.aborted.set()

    async def health(self) -> bool:
        return self._model is not None

    async def close(self) -> None:
        for run in self._runs.values():
            run.aborted.set()
