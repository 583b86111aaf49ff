"""Sentence-aware chunking: whole sentences packed up to a size, with sentence overlap.

Chunk ids are ``<document id>#<index>``, so chunking the same document again yields the same
ids and a redelivered document overwrites its chunks instead of duplicating them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_TERMINAL = frozenset(".!?\"')]")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
_BLOCK_START = re.compile(r"^(#{1,6}\s|[-*+]\s|\d+[.)]\s)")


@dataclass(frozen=True)
class TextChunk:
    """One chunk of a document."""

    chunk_id: str
    index: int
    text: str


def chunk_id(document_id: str, index: int) -> str:
    """The stable id of chunk ``index`` of ``document_id``."""
    return f"{document_id}#{index}"


def _blocks(text: str) -> list[str]:
    """Paragraphs, headings and list items; wrapped lines inside a paragraph are joined."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or _BLOCK_START.match(stripped):
            if current:
                blocks.append(" ".join(current))
            current = [stripped] if stripped else []
            if stripped.startswith("#"):  # a heading is a block of its own
                blocks.append(stripped)
                current = []
        else:
            current.append(stripped)
    if current:
        blocks.append(" ".join(current))
    return [" ".join(b.split()) for b in blocks if b.strip()]


def sentences(text: str, limit: int) -> list[str]:
    """Sentences of ``text`` (a heading, list item or paragraph end closes one); a sentence
    longer than ``limit`` characters is split at word boundaries."""
    out: list[str] = []
    for block in _blocks(text):
        for sentence in _SENTENCE_BREAK.split(block):
            while len(sentence) > limit:
                cut = sentence.rfind(" ", 0, limit)
                cut = cut if cut > 0 else limit
                out.append(sentence[:cut])
                sentence = sentence[cut:].lstrip()
            if sentence:
                out.append(sentence)
    return out


def _join(parts: list[str]) -> str:
    """Sentences joined by spaces; a line without end punctuation (a heading, a list item)
    stays a paragraph of its own."""
    out = ""
    for i, part in enumerate(parts):
        if i:
            ended = parts[i - 1][-1] in _TERMINAL and part[-1:] in _TERMINAL
            out += " " if ended else "\n\n"
        out += part
    return out


def chunk(document_id: str, text: str, size: int, overlap: int) -> list[TextChunk]:
    """Pack whole sentences into chunks of at most ``size`` characters; each chunk after the
    first starts with the trailing sentences of the previous one, up to ``overlap`` characters.
    """
    parts = sentences(text, size)
    chunks: list[str] = []
    join = _join
    current: list[str] = []
    fresh = 0  # sentences in ``current`` not carried over from the previous chunk
    for sentence in parts:
        if current and fresh and len(join([*current, sentence])) > size:
            chunks.append(join(current))
            carried: list[str] = []
            for prev in reversed(current):
                if len(join([prev, *carried])) > overlap:
                    break
                carried.insert(0, prev)
            while carried and len(join([*carried, sentence])) > size:
                carried.pop(0)
            current, fresh = carried, 0
        current.append(sentence)
        fresh += 1
    if current and fresh:
        chunks.append(join(current))
    return [TextChunk(chunk_id(document_id, i), i, c) for i, c in enumerate(chunks)]


SUMMARY_CHARS = 200


def summary(text: str, limit: int = SUMMARY_CHARS) -> str:
    """What a document is about, in its own words: its first paragraph that is not a
    heading, whitespace collapsed, cut at a word boundary within ``limit`` characters."""
    for paragraph in re.split(r"\n\s*\n", text):
        line = " ".join(paragraph.split())
        if line and not line.startswith("#"):
            if len(line) <= limit:
                return line
            cut = line.rfind(" ", 0, limit)
            return line[: cut if cut > 0 else limit]
    return ""


def in_context(title: str, about: str, text: str) -> str:
    """A chunk as it is embedded: its document's title and summary before it, so a passage
    deep in a document still says what it belongs to."""
    head = " — ".join(p for p in (title, about) if p)
    return f"{head}\n\n{text}" if head else text


_WORDS = re.compile(r"[0-9a-z_]+")
_MARKER = re.compile(r"\[\d+\]")
#: a sentence is supported when this share of its words occurs in one cited passage
SUPPORTED_SHARE = 0.7


def _words(text: str) -> set[str]:
    return {w for w in _WORDS.findall(text.lower()) if len(w) > 2}


def groundedness(answer: str, passages: Sequence[str]) -> float:
    """The share of the answer's sentences supported by a passage: most of the sentence's
    words (three letters or more, citation markers aside) occur in one of ``passages``.
    Sentences of fewer than three such words are not counted; 0.0 without any."""
    bags = [_words(p) for p in passages]
    counted = supported = 0
    for sentence in sentences(_MARKER.sub(" ", answer), limit=len(answer) + 1):
        words = _words(sentence)
        if len(words) < 3:
            continue
        counted += 1
        if any(len(words & bag) >= SUPPORTED_SHARE * len(words) for bag in bags):
            supported += 1
    return supported / counted if counted else 0.0
