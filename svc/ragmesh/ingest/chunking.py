"""Sentence-aware chunking: whole sentences packed up to a size, with sentence overlap.

Chunk ids are ``<document id>#<index>``, so chunking the same document again yields the same
ids and a redelivered document overwrites its chunks instead of duplicating them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n+|$)")


@dataclass(frozen=True)
class TextChunk:
    """One chunk of a document."""

    chunk_id: str
    index: int
    text: str


def chunk_id(document_id: str, index: int) -> str:
    """The stable id of chunk ``index`` of ``document_id``."""
    return f"{document_id}#{index}"


def sentences(text: str, limit: int) -> list[str]:
    """Sentences of ``text`` (paragraph breaks end one); a sentence longer than ``limit``
    characters is split at word boundaries."""
    out: list[str] = []
    for m in _SENTENCE.finditer(text):
        sentence = " ".join(m.group(0).split())
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            out.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if sentence:
            out.append(sentence)
    return out


def chunk(document_id: str, text: str, size: int, overlap: int) -> list[TextChunk]:
    """Pack whole sentences into chunks of at most ``size`` characters; each chunk after the
    first starts with the trailing sentences of the previous one, up to ``overlap`` characters.
    """
    parts = sentences(text, size)
    chunks: list[str] = []
    current: list[str] = []
    fresh = 0  # sentences in ``current`` not carried over from the previous chunk
    for sentence in parts:
        if current and fresh and len(" ".join([*current, sentence])) > size:
            chunks.append(" ".join(current))
            carried: list[str] = []
            for prev in reversed(current):
                if len(" ".join([prev, *carried])) > overlap:
                    break
                carried.insert(0, prev)
            while carried and len(" ".join([*carried, sentence])) > size:
                carried.pop(0)
            current, fresh = carried, 0
        current.append(sentence)
        fresh += 1
    if current and fresh:
        chunks.append(" ".join(current))
    return [TextChunk(chunk_id(document_id, i), i, c) for i, c in enumerate(chunks)]
