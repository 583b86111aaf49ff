"""What the query service and the ingest worker need from their peers, as protocols.

The gRPC implementations live in :mod:`ragmesh.kit.clients`; tests may pass fakes. No grpc
here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ragmesh.embedding.batcher import Matrix
from ragmesh.embedding.model import Purpose
from ragmesh.generation.params import Params
from ragmesh.generation.service import Delta, Done


@dataclass(frozen=True)
class Embedded:
    """Vectors (one row per text) and the model that made them."""

    vectors: Matrix
    model: str


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk."""

    chunk_id: str
    document_id: str
    text: str
    score: float
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query vector and the index version they came from."""

    hits: tuple[Hit, ...]
    index_version: int


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk to upsert, with its vector."""

    chunk_id: str
    document_id: str
    text: str
    metadata: Mapping[str, str]
    vector: Matrix


class Embedder(Protocol):
    async def embed(self, texts: Sequence[str], purpose: Purpose) -> Embedded:
        """Embed ``texts``."""


class Retriever(Protocol):
    async def search(self, vector: Matrix, top_k: int, filter: Mapping[str, str]) -> SearchResult:
        """Nearest chunks of one query vector."""

    async def upsert(self, chunks: Sequence[ChunkRecord]) -> int:
        """Insert or replace chunks; returns the index version."""

    async def delete(self, chunk_ids: Sequence[str]) -> int:
        """Delete chunks by id; returns the index version."""


class Generator(Protocol):
    def generate(
        self, question: str, passages: Sequence[Hit], params: Params
    ) -> AsyncIterator[Delta | Done]:
        """Stream the answer: deltas, then one Done."""
