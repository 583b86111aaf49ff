"""Recall@k of a golden query set, measured against the addresses a probe names.

A golden query is a question and the documents that must answer it. Recall@k of one query
is the share of its documents found among the top k retrieved passages; the gate's recall is
the mean over the set. Two ways to retrieve: embed with an embedding service and search a
retrieval service (to judge an embedding or retrieval canary), or ``Ask`` a query service and
read its citations (to judge a query canary).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragmesh.kit.errors import ConfigError, InvalidArgument


@dataclass(frozen=True)
class GoldenQuery:
    """A question and the ids of the documents that answer it."""

    question: str
    documents: frozenset[str]


def load_golden(path: Path) -> tuple[GoldenQuery, ...]:
    """Read a JSON-lines golden set: ``{"question": ..., "documents": [...]}`` per line."""
    queries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, documents = row["question"], row["documents"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}:{n}: not a golden query ({e})") from None
        if not isinstance(question, str) or not question.strip() or not documents:
            raise ConfigError(f"{path}:{n}: needs a question and at least one document")
        queries.append(GoldenQuery(question, frozenset(str(d) for d in documents)))
    if not queries:
        raise ConfigError(f"{path}: the golden set is empty")
    return tuple(queries)


@dataclass(frozen=True)
class Probe:
    """What to measure: where to retrieve from, k and the pass threshold."""

    k: int
    min_recall: float
    query: str = ""  # a QueryService address: Ask and read the citations
    embedding: str = ""  # or embed here ...
    retrieval: str = ""  # ... and search here


MAX_K = 50


def parse_probe(metadata: Mapping[str, Any]) -> Probe:
    """The probe of a Flagger webhook's ``metadata`` (string values); errors name the field."""
    unknown = set(metadata) - {"k", "min_recall", "query", "embedding", "retrieval"}
    if unknown:
        raise InvalidArgument(f"metadata.{sorted(unknown)[0]}", "is not a known field")
    try:
        k = int(metadata.get("k", "5"))
    except (TypeError, ValueError):
        raise InvalidArgument("metadata.k", "must be an integer") from None
    if not 1 <= k <= MAX_K:
        raise InvalidArgument("metadata.k", f"must be between 1 and {MAX_K}")
    try:
        min_recall = float(metadata.get("min_recall", "0.9"))
    except (TypeError, ValueError):
        raise InvalidArgument("metadata.min_recall", "must be a number") from None
    if not 0.0 <= min_recall <= 1.0:
        raise InvalidArgument("metadata.min_recall", "must be between 0 and 1")
    probe = Probe(
        k,
        min_recall,
        str(metadata.get("query", "")),
        str(metadata.get("embedding", "")),
        str(metadata.get("retrieval", "")),
    )
    if bool(probe.query) == bool(probe.embedding or probe.retrieval):
        raise InvalidArgument("metadata.query", "give either query, or embedding and retrieval")
    if not probe.query and not (probe.embedding and probe.retrieval):
        raise InvalidArgument(
            "metadata.retrieval" if probe.embedding else "metadata.embedding", "is required"
        )
    return probe


#: documents of the top k passages for one question
Retrieve = Callable[[str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class Verdict:
    """The measured recall, the threshold, and the queries that missed documents."""

    recall: float
    min_recall: float
    k: int
    misses: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def passed(self) -> bool:
        return self.recall >= self.min_recall

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "recall": round(self.recall, 4),
            "min_recall": self.min_recall,
            "k": self.k,
            "misses": [{"question": q, "missing": list(m)} for q, m in self.misses],
        }


async def measure(golden: Sequence[GoldenQuery], retrieve: Retrieve, probe: Probe) -> Verdict:
    """Recall@k over the golden set."""
    total, misses = 0.0, []
    for g in golden:
        found = set(await retrieve(g.question, probe.k)) & g.documents
        total += len(found) / len(g.documents)
        if found != g.documents:
            misses.append((g.question, tuple(sorted(g.documents - found))))
    return Verdict(total / len(golden), probe.min_recall, probe.k, tuple(misses))
