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
    """Every call names its tenant; ids are scoped to it."""

    async def search(
        self,
        tenant: str,
        vector: Matrix,
        top_k: int,
        filter: Mapping[str, str],
        min_index_version: int = 0,
        model: str = "",
        text: str = "",
    ) -> SearchResult:
        """Nearest chunks of ``tenant`` to one query vector (of embedding ``model``), from an
        index of at least ``min_index_version``; with the query's ``text``, hybrid search."""

    async def upsert(self, tenant: str, chunks: Sequence[ChunkRecord], model: str = "") -> int:
        """Insert or replace chunks (vectors of embedding ``model``); returns the index
        version."""

    async def delete(
        self, tenant: str, chunk_ids: Sequence[str] = (), document_ids: Sequence[str] = ()
    ) -> tuple[int, int]:
        """Delete chunks by chunk or document id; returns (chunks deleted, index version)."""


class Generator(Protocol):
    def generate(
        self,
        question: str,
        passages: Sequence[Hit],
        params: Params,
        question_vector: Embedded | None = None,
    ) -> AsyncIterator[Delta | Done]:
        """Stream the answer: deltas, then one Done. ``question_vector``: the question's
        embedding when the caller has it (an engine scoring with that model reuses it)."""
