"""Requests to the retrieval service, checked before anything is read or written: each
problem is an InvalidArgument naming the proto field (``chunks[3].vector``). No grpc here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragmesh.kit.domain import Matrix, metadata_problem, tenant_problem
from ragmesh.kit.errors import InvalidArgument, quoted
from ragmesh.retrieval.store import ChunkIn


@dataclass(frozen=True)
class Limits:
    """Request limits enforced before anything is written."""

    max_top_k: int = 100
    max_queries: int = 256
    max_chunks: int = 1024
    max_chunk_chars: int = 16384


def _unit(vectors: Matrix, field_name: str) -> Matrix:
    if not np.isfinite(vectors).all():
        row = int(np.nonzero(~np.isfinite(vectors).all(axis=1))[0][0])
        raise InvalidArgument(field_name.format(row), "contains NaN or infinity")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.isfinite(norms).all():  # components near 1e20: the norm overflows float32
        row = int(np.nonzero(~np.isfinite(norms[:, 0]))[0][0])
        raise InvalidArgument(field_name.format(row), "its norm overflows float32")
    if (norms == 0).any():
        row = int(np.nonzero(norms[:, 0] == 0)[0][0])
        raise InvalidArgument(field_name.format(row), "must not be the zero vector")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


MAX_ID_CHARS = 512  # chunk and document ids


MAX_MODEL_CHARS = 256


def model(name: str) -> None:
    """Check an embedding model name (empty: none given)."""
    if len(name) > MAX_MODEL_CHARS or not all("!" <= c <= "~" for c in name):
        raise InvalidArgument(
            "embedding_model", f"must be at most {MAX_MODEL_CHARS} visible ASCII characters"
        )


def tenant(name: str) -> None:
    """Check the tenant every Search, Upsert and Delete names."""
    found = tenant_problem(name)
    if found is not None:
        raise InvalidArgument("tenant", found)


def upsert(chunks: Sequence[ChunkIn], limits: Limits, dim: int) -> Matrix:
    """Check a batch and return its unit vectors; raises InvalidArgument naming the field."""
    if not chunks:
        raise InvalidArgument("chunks", "at least one chunk is required")
    if len(chunks) > limits.max_chunks:
        raise InvalidArgument(
            "chunks", f"{len(chunks)} chunks exceed the limit of {limits.max_chunks}"
        )
    seen: set[str] = set()
    for i, c in enumerate(chunks):
        for name, value in (("chunk_id", c.chunk_id), ("document_id", c.document_id)):
            if not value:
                raise InvalidArgument(f"chunks[{i}].{name}", "must not be empty")
            if len(value) > MAX_ID_CHARS:
                raise InvalidArgument(
                    f"chunks[{i}].{name}", f"longer than {MAX_ID_CHARS} characters"
                )
        if c.chunk_id in seen:
            raise InvalidArgument(
                f"chunks[{i}].chunk_id", f"duplicate id {quoted(c.chunk_id)} in the request"
            )
        seen.add(c.chunk_id)
        if not c.text.strip():  # generation has nothing to quote from a blank chunk
            raise InvalidArgument(f"chunks[{i}].text", "must not be blank")
        found = metadata_problem(c.metadata)
        if found is not None:
            raise InvalidArgument(f"chunks[{i}].metadata{found[0]}", found[1])
        if len(c.text) > limits.max_chunk_chars:
            raise InvalidArgument(
                f"chunks[{i}].text",
                f"{len(c.text)} characters exceed the limit of {limits.max_chunk_chars}",
            )
        if len(c.vector) != 4 * dim:
            raise InvalidArgument(
                f"chunks[{i}].vector",
                f"expected {dim} float32 values, got {len(c.vector) / 4:g}",
            )
    raw = np.frombuffer(b"".join(c.vector for c in chunks), dtype="<f4").reshape(len(chunks), dim)
    return _unit(raw, "chunks[{}].vector")


def queries(
    count: int, dimension: int, data: bytes, top_k: int, limits: Limits, dim: int
) -> Matrix:
    """Check a Search request; returns its unit query vectors."""
    if count == 0:
        raise InvalidArgument("queries", "at least one query vector is required")
    if count > limits.max_queries:
        raise InvalidArgument(
            "queries.count", f"{count} queries exceed the limit of {limits.max_queries}"
        )
    if dimension != dim:
        raise InvalidArgument("queries.dimension", f"expected {dim}, got {dimension}")
    if len(data) != 4 * count * dimension:
        raise InvalidArgument(
            "queries.data", f"expected {4 * count * dimension} bytes, got {len(data)}"
        )
    if not 1 <= top_k <= limits.max_top_k:
        raise InvalidArgument("top_k", f"must be between 1 and {limits.max_top_k}, got {top_k}")
    raw = np.frombuffer(data, dtype="<f4").reshape(count, dimension)
    return _unit(raw, "queries.data[{}]")


def query_texts(texts: Sequence[str], count: int, limits: Limits) -> None:
    """Check a Search request's query texts: none (dense search), or one per query vector."""
    if texts and len(texts) != count:
        raise InvalidArgument(
            "query_texts", f"give one text per query vector ({count}) or none, got {len(texts)}"
        )
    for i, text in enumerate(texts):
        if len(text) > limits.max_chunk_chars:
            raise InvalidArgument(
                f"query_texts[{i}]",
                f"{len(text)} characters exceed the limit of {limits.max_chunk_chars}",
            )


def delete(chunk_ids: Sequence[str], document_ids: Sequence[str], limits: Limits) -> None:
    """Check a Delete request."""
    if not chunk_ids and not document_ids:
        raise InvalidArgument("chunk_ids", "give chunk_ids or document_ids")
    if len(chunk_ids) + len(document_ids) > limits.max_chunks:
        raise InvalidArgument(
            "chunk_ids",
            f"{len(chunk_ids) + len(document_ids)} ids exceed the limit of "
            f"{limits.max_chunks} per call",
        )
    for name, ids in (("chunk_ids", chunk_ids), ("document_ids", document_ids)):
        for i, value in enumerate(ids):
            if not value:
                raise InvalidArgument(f"{name}[{i}]", "must not be empty")
