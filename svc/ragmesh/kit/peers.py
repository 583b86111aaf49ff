"""What the query service and the ingest worker need from their peers, as protocols.

The gRPC implementations live in :mod:`ragmesh.kit.clients`; tests may pass fakes. No grpc
here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

from ragmesh.kit.domain import (
    ChunkRecord,
    Delta,
    Done,
    Embedded,
    Hit,
    Matrix,
    Params,
    Purpose,
    SearchResult,
)


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
