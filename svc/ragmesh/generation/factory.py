"""The engine ``RAGMESH_GEN_ENGINE`` selects. Engines are imported only when selected, so a
CPU node never imports vLLM (and nothing imports this module but ``__main__`` and tests)."""

from __future__ import annotations

from ragmesh.generation.engine import Engine
from ragmesh.kit.config import EmbeddingSettings, GenerationSettings
from ragmesh.kit.errors import ConfigError


def create_engine(settings: GenerationSettings, embedding: EmbeddingSettings) -> Engine:
    """The engine ``RAGMESH_GEN_ENGINE`` selects, constructed but not loaded."""
    if settings.engine == "extractive":
        from ragmesh.generation.extractive import ExtractiveEngine

        return ExtractiveEngine(embedding, settings.context_tokens)
    if settings.engine == "openai":
        from ragmesh.generation.openai_engine import OpenAIEngine

        return OpenAIEngine(settings)
    if not settings.model:
        raise ConfigError(f"RAGMESH_GEN_MODEL: required by the {settings.engine} engine")
    if settings.engine == "transformers":
        from ragmesh.generation.hf_engine import TransformersEngine

        return TransformersEngine(settings.model, settings.device, settings.context_tokens)
    from ragmesh.generation.vllm_engine import VllmEngine

    return VllmEngine(settings.model, settings.context_tokens)
