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
    """A question, the ids of the documents that answer it (none: the documents do not
    answer it, and the right answer is no answer) and a fact the answer must contain."""

    question: str
    documents: frozenset[str]
    fact: str = ""


def load_golden(path: Path) -> tuple[GoldenQuery, ...]:
    """Read a JSON-lines golden set, per line ``{"question": ..., "document": ID or null}``
    or ``{"question": ..., "documents": [...]}``, with an optional ``"fact"``."""
    queries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question = row["question"]
            documents = row["documents"] if "documents" in row else [row["document"]]
            documents = [d for d in documents if d is not None]
            fact = row.get("fact") or ""
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}:{n}: not a golden query ({e})") from None
        if not isinstance(question, str) or not question.strip() or not isinstance(fact, str):
            raise ConfigError(f"{path}:{n}: needs a question (and a fact that is a string)")
        queries.append(GoldenQuery(question, frozenset(str(d) for d in documents), fact))
    if not any(q.documents for q in queries):
        raise ConfigError(f"{path}: the golden set has no answerable question")
    return tuple(queries)


def same_document(cited: str, expected: str) -> bool:
    """A cited document id names the expected one: equal, or ending in ``/`` + it (documents
    ingested from another directory keep their path)."""
    return cited == expected or cited.endswith("/" + expected)


@dataclass(frozen=True)
class Answer:
    """What an Ask returned for one golden question."""

    documents: tuple[str, ...]  # the cited documents, in citation order
    text: str
    no_answer: bool
    groundedness: float


@dataclass(frozen=True)
class Scores:
    """Answer quality over a golden set (shares between 0 and 1)."""

    questions: int
    hit1: float  # answerable questions whose first citation is an expected document
    hit5: float  # ... with an expected document among the first five citations
    fact: float  # ... whose answer contains the expected fact (case-insensitive)
    groundedness: float  # mean groundedness of the answers given
    no_answer: float  # answerable questions answered with no answer
    refused: float  # unanswerable questions answered with no answer (1.0 when none)
    misses: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self).items()
        }
        out["misses"] = list(self.misses)
        return out


def score(golden: Sequence[GoldenQuery], answers: Sequence[Answer]) -> Scores:
    """Score ``answers`` (one per golden question, in order)."""
    answerable = [(g, a) for g, a in zip(golden, answers, strict=True) if g.documents]
    unanswerable = [a for g, a in zip(golden, answers, strict=True) if not g.documents]
    n = max(1, len(answerable))
    hit1 = hit5 = fact = no_answer = 0
    misses = []
    for g, a in answerable:
        first = [d for d in a.documents[:1] if any(same_document(d, e) for e in g.documents)]
        top = [d for d in a.documents[:5] if any(same_document(d, e) for e in g.documents)]
        has_fact = not g.fact or g.fact.casefold() in a.text.casefold()
        hit1, hit5 = hit1 + bool(first), hit5 + bool(top)
        fact += has_fact
        no_answer += a.no_answer
        if not (first and has_fact):
            misses.append(g.question)
    given = [a.groundedness for a in answers if not a.no_answer]
    return Scores(
        len(golden),
        hit1 / n,
        hit5 / n,
        fact / n,
        sum(given) / len(given) if given else 0.0,
        no_answer / n,
        sum(a.no_answer for a in unanswerable) / len(unanswerable) if unanswerable else 1.0,
        tuple(misses),
    )


@dataclass(frozen=True)
class Probe:
    """What to measure: where to retrieve from, k and the pass thresholds."""

    k: int
    min_recall: float
    query: str = ""  # a QueryService address: Ask and read the citations (and answers)
    embedding: str = ""  # or embed here ...
    retrieval: str = ""  # ... and search here
    min_fact: float | None = None  # fact-in-answer threshold (query probes)
    canary: bool = False  # Ask with x-ragmesh-canary: true (the generation canary answers)


MAX_K = 50


def parse_probe(metadata: Mapping[str, Any]) -> Probe:
    """The probe of a Flagger webhook's ``metadata`` (string values); errors name the field."""
    unknown = set(metadata) - {
        "k",
        "min_recall",
        "min_fact",
        "canary",
        "query",
        "embedding",
        "retrieval",
    }
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
    min_fact = _share(metadata, "min_fact")
    canary = str(metadata.get("canary", "false")).lower()
    if canary not in ("true", "false"):
        raise InvalidArgument("metadata.canary", "must be true or false")
    probe = Probe(
        k,
        min_recall,
        str(metadata.get("query", "")),
        str(metadata.get("embedding", "")),
        str(metadata.get("retrieval", "")),
        min_fact,
        canary == "true",
    )
    if (min_fact is not None or probe.canary) and not probe.query:
        field = "metadata.min_fact" if min_fact is not None else "metadata.canary"
        raise InvalidArgument(field, "needs a query probe (answers are read from Ask)")
    if bool(probe.query) == bool(probe.embedding or probe.retrieval):
        raise InvalidArgument("metadata.query", "give either query, or embedding and retrieval")
    if not probe.query and not (probe.embedding and probe.retrieval):
        raise InvalidArgument(
            "metadata.retrieval" if probe.embedding else "metadata.embedding", "is required"
        )
    return probe


def _share(metadata: Mapping[str, Any], name: str) -> float | None:
    if name not in metadata:
        return None
    try:
        value = float(metadata[name])
    except (TypeError, ValueError):
        raise InvalidArgument(f"metadata.{name}", "must be a number") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"metadata.{name}", "must be between 0 and 1")
    return value


@dataclass(frozen=True)
class Retrieved:
    """The documents of the top k passages for one question, and the answer ("" when the
    probe searched without asking)."""

    documents: Sequence[str]
    answer: str = ""


Retrieve = Callable[[str, int], Awaitable[Retrieved]]


@dataclass(frozen=True)
class Verdict:
    """The measured recall, the threshold, and the queries that missed documents."""

    recall: float
    min_recall: float
    k: int
    misses: tuple[tuple[str, tuple[str, ...]], ...]
    fact: float | None = None  # fact-in-answer, when the probe has min_fact
    min_fact: float | None = None
    fact_misses: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        facts_ok = self.min_fact is None or (self.fact or 0.0) >= self.min_fact
        return self.recall >= self.min_recall and facts_ok

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "passed": self.passed,
            "recall": round(self.recall, 4),
            "min_recall": self.min_recall,
            "k": self.k,
            "misses": [{"question": q, "missing": list(m)} for q, m in self.misses],
        }
        if self.min_fact is not None:
            out["fact"] = round(self.fact or 0.0, 4)
            out["min_fact"] = self.min_fact
            out["fact_misses"] = list(self.fact_misses)
        return out


async def measure(golden: Sequence[GoldenQuery], retrieve: Retrieve, probe: Probe) -> Verdict:
    """Recall@k over the golden set's answerable questions, and (min_fact) the share of
    answers that contain their question's fact."""
    total, misses, facts, fact_misses = 0.0, [], 0, []
    answerable = [g for g in golden if g.documents]
    for g in answerable:
        got = await retrieve(g.question, probe.k)
        found = {e for e in g.documents if any(same_document(d, e) for d in got.documents)}
        total += len(found) / len(g.documents)
        if found != g.documents:
            misses.append((g.question, tuple(sorted(g.documents - found))))
        if not g.fact or g.fact.casefold() in got.answer.casefold():
            facts += 1
        else:
            fact_misses.append(g.question)
    fact = facts / len(answerable) if probe.min_fact is not None else None
    return Verdict(
        total / len(answerable),
        probe.min_recall,
        probe.k,
        tuple(misses),
        fact,
        probe.min_fact,
        tuple(fact_misses) if probe.min_fact is not None else (),
    )
