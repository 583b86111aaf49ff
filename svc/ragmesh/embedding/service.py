"""The embedding service layer: limits, then the micro-batched model (the engine)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ragmesh.embedding.batcher import MicroBatcher
from ragmesh.kit.config import EmbeddingSettings
from ragmesh.kit.domain import Matrix, Purpose
from ragmesh.kit.encoder import EmbeddingModel
from ragmesh.kit.errors import InvalidArgument, NotReady


class EmbeddingService:
    """Validates requests and embeds them through one shared :class:`MicroBatcher`."""

    def __init__(
        self,
        settings: EmbeddingSettings,
        model_factory: Callable[[EmbeddingSettings], EmbeddingModel] = EmbeddingModel,
    ) -> None:
        self.settings = settings
        self._factory = model_factory
        self.model: EmbeddingModel | None = None
        self.batcher: MicroBatcher[Purpose] | None = None

    def load(self) -> None:
        """Load the model (blocking: call it from a worker thread)."""
        self.model = self._factory(self.settings)

    async def health(self) -> bool:
        """The model is loaded and the batcher's worker is alive."""
        return self.model is not None and self.batcher is not None and self.batcher.healthy()

    def start(self) -> None:
        """Create the batcher; call on the event loop after :meth:`load`."""
        assert self.model is not None, "load() first"
        self.batcher = MicroBatcher(
            self.model.encode,
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            max_queued=self.settings.max_queued,
        )

    @property
    def dimension(self) -> int:
        if self.model is None:
            raise NotReady("embedding model not loaded")
        return self.model.dimension

    @property
    def model_name(self) -> str:
        if self.model is None:
            raise NotReady("embedding model not loaded")
        return self.model.name

    def validate(self, texts: Sequence[str]) -> None:
        """Check the request against the limits; raises InvalidArgument naming the field."""
        if not texts:
            raise InvalidArgument("texts", "at least one text is required")
        if len(texts) > self.settings.max_texts:
            raise InvalidArgument(
                "texts", f"{len(texts)} texts exceed the limit of {self.settings.max_texts}"
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{i}]", "must not be empty")
            if len(text) > self.settings.max_chars:
                raise InvalidArgument(
                    f"texts[{i}]",
                    f"{len(text)} characters exceed the limit of {self.settings.max_chars}",
                )

    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Matrix:
        """Validate, then embed through the batcher."""
        self.validate(texts)
        if self.batcher is None:
            raise NotReady("embedding model not loaded")
        return await self.batcher.embed(texts, purpose)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
