"""``ragmesh eval GOLDEN.jsonl``: answer quality of the running stack over a golden set.

Every question is asked through the query service as a user asks it (no answer cache); the
citations, the streamed answer and ``AskDone`` are scored by :func:`ragmesh.gate.service.score`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import grpc

from ragmesh.gate.service import Answer, GoldenQuery, Scores
from ragmesh.kit.clients import QueryClient
from ragmesh.kit.domain import AskDone, AskInput, Citations, Delta, Outcome

TOP_K = 5
#: the figures, their labels and the direction that is better
FIGURES = (
    ("hit1", "hit@1", True),
    ("hit5", "hit@5", True),
    ("fact", "fact-in-answer", True),
    ("groundedness", "groundedness", True),
    ("no_answer", "no-answer rate (answerable questions)", False),
    ("refused", "no-answer rate (unanswerable questions)", True),
)


async def ask_all(
    address: str,
    golden: Sequence[GoldenQuery],
    token: str,
    api_key: str,
    timeout: float,
    min_index_version: int,
) -> list[Answer]:
    answers = []
    async with grpc.aio.insecure_channel(address) as channel:
        client = QueryClient(channel, timeout=timeout, token=token, api_key=api_key)
        for g in golden:
            request = AskInput(
                question=g.question,
                top_k=TOP_K,
                skip_cache=True,
                min_index_version=min_index_version,
            )
            documents: tuple[str, ...] = ()
            text, done = "", None
            async for event in client.ask(request):
                if isinstance(event, Citations):
                    documents = tuple(c.document_id for c in event.citations)
                elif isinstance(event, Delta):
                    text += event.text
                elif isinstance(event, AskDone):
                    done = event
            assert done is not None  # every Ask stream ends with one
            no_answer = done.outcome is Outcome.NO_ANSWER
            answers.append(Answer(documents, text, no_answer, done.groundedness))
    return answers


def report(path: Path, scores: Scores, as_json: bool) -> str:
    if as_json:
        return json.dumps({"golden": str(path), **scores.as_dict()}, indent=2)
    lines = [f"{path}: {scores.questions} questions"]
    for name, label, _ in FIGURES:
        lines.append(f"  {label:<40} {getattr(scores, name):.3f}")
    if scores.misses:
        lines.append("missed (first citation or fact):")
        lines += [f"  - {q}" for q in scores.misses]
    return "\n".join(lines)
