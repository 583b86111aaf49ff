"""The default engine: an extractive answer built from the passages, no language model.

The most relevant sentences of the given passages, scored by cosine similarity with the
question under the same sentence-transformers model the embedding service uses, are
streamed a sentence at a time, each followed by its passage's ``[n]`` citation marker (the
whole answer is known at once: a message per word would only cost every hop a message
per word). Tokens are whitespace-separated words. Sentence vectors are kept, least recently used
dropped first, so a passage served again (a popular document, a repeated question) costs
only the question's encoding.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ragmesh.generation.engine import EngineRequest, Piece, Source
from ragmesh.generation.untrusted import is_instruction
from ragmesh.kit.config import EmbeddingSettings
from ragmesh.kit.domain import NO_ANSWER, Embedded, Purpose
from ragmesh.kit.encoder import EmbeddingModel
from ragmesh.kit.errors import NotReady
from ragmesh.kit.text import sentences

_WORD = re.compile(r"\S+")
#: what makes a heading or term line a name: an identifier with an underscore or digits, a
#: call ``name(``, a capitalised constant, or code in backticks
_NAME = re.compile(r"`[^`]+`|\b[A-Za-z_]\w*(?=\()|\b\w*_\w+\b|\b[A-Z][A-Z0-9]{2,}\b")
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
MAX_LABEL_CHARS = 120
MAX_SENTENCES = 3
MAX_SENTENCE_WORDS = 60
#: sentence vectors kept (384 float32 each for MiniLM: about 12 MiB)
SENTENCE_VECTORS = 8192
NOTHING_FOUND = NO_ANSWER


def split_sentences(text: str) -> list[str]:
    """Answer candidates: the sentences the ingest chunker sees, less headings and less
    sentences that give orders to whoever answers (document content is data)."""
    return [sentence for sentence, _ in labelled_sentences(text)]


def _is_candidate(sentence: str) -> bool:
    words = len(_WORD.findall(sentence))
    return (words >= 6 or (words >= 3 and sentence[-1] in ".!?")) and not is_instruction(sentence)


def _label(paragraph: str) -> str | None:
    """What a paragraph heads: the name it introduces when it is a heading, a term line (a
    few words, no sentence) or a signature (``int open(const char *path, int flags);``) that
    names something (a call, an identifier, a capitalised constant); "" for a heading that
    names nothing (a new section: no name); None for prose."""
    line = " ".join(paragraph.split())
    heading = line.startswith("#")
    line = line.lstrip("#*- ").rstrip(":*").strip()
    signature = line.endswith((");", ")")) and "(" in line
    term = len(line.split()) <= 8 and line[-1:] not in ".!?"
    if not line or not (heading or signature or term) or len(line) > MAX_LABEL_CHARS:
        return "" if heading else None
    return line if _key(line) else ("" if heading else None)


def _key(label: str) -> str:
    """The name in a label: the function a signature declares, else the first name."""
    calls = _CALL.findall(label)
    if calls:
        return str(calls[-1] if label.endswith(";") else calls[0])
    found = _NAME.search(label)
    return found.group().strip("`") if found else ""


def labelled_sentences(text: str, title: str = "") -> list[tuple[str, str]]:
    """Answer candidates with the name each one describes ("" when none): the last heading,
    term line or signature before it in its passage, else the document's ``title`` when it
    names something (a passage cut from deep in a document has lost its top heading)."""
    out: list[tuple[str, str]] = []
    base = title if _label(f"# {title}") else ""
    label = base
    for paragraph in re.split(r"\n\s*\n", text):
        found = _label(paragraph)
        if found is not None:
            label = found or base
            continue
        for raw in sentences(paragraph, limit=len(paragraph) + 1):
            sentence = raw.lstrip("#*- ").strip()
            if _is_candidate(sentence):
                out.append((sentence, label))
    return out


def named(sentence: str, label: str) -> str:
    """``sentence`` with the name it describes in front, unless it already names it."""
    if not label:
        return sentence
    if _key(label).casefold() in sentence.casefold():
        return sentence
    return f"{label}: {sentence}"


class ExtractiveEngine:
    """Composes answers from passage sentences; the model is loaded once."""

    def __init__(self, embedding: EmbeddingSettings, context_tokens: int) -> None:
        self._settings = embedding
        self._context_tokens = context_tokens
        self._model: EmbeddingModel | None = None
        # touched only on the one compose thread
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extractive")
        self._active: set[str] = set()
        self._aborted: set[str] = set()
        self.produced = 0  # tokens handed out since start (tests assert on it)

    @property
    def model_name(self) -> str:
        return f"extractive/{self._settings.model}"

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._pool, EmbeddingModel, self._settings)

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        for i, m in enumerate(_WORD.finditer(text)):
            if i == max_tokens - 1:
                return text[: m.end()]
        return text

    def _compose(
        self,
        question: str,
        sources: tuple[Source, ...],
        max_tokens: int,
        given: Embedded | None = None,
    ) -> list[list[str]]:
        """The answer's sentences, each as its word-tokens ending in its citation marker.
        ``given``: the question's vector from the caller, used when this model made it."""
        if self._model is None:
            raise NotReady("extractive engine not loaded")
        candidates: list[tuple[str, int]] = []
        labels: list[str] = []
        seen: set[str] = set()
        for source in sources:
            for sentence, label in labelled_sentences(source.text, source.title):
                key = sentence.lower()
                if key not in seen:
                    seen.add(key)
                    candidates.append((sentence, source.marker))
                    labels.append(label)
        if not candidates:
            return [NOTHING_FOUND.split(" ")]
        if (
            given is not None
            and given.model == self._model.name
            and given.vectors.shape
            == (
                1,
                self._model.dimension,
            )
        ):
            q = given.vectors[0]
        else:
            q = self._model.encode([question], Purpose.QUERY)[0]
        s = self._sentence_vectors(self._model, [c[0] for c in candidates])
        order = np.argsort(-(s @ q), kind="stable")
        out: list[list[str]] = []
        words = 0
        for i in order[:MAX_SENTENCES]:
            sentence, marker = candidates[int(i)]
            sentence = named(sentence, labels[int(i)])
            tokens = _WORD.findall(sentence)[:MAX_SENTENCE_WORDS] + [f"[{marker}]"]
            if words and words + len(tokens) > max_tokens:
                break
            out.append(tokens)
            words += len(tokens)
        return out

    def _sentence_vectors(self, model: EmbeddingModel, texts: list[str]) -> np.ndarray:
        """The texts' document vectors, encoding only those not kept from earlier answers."""
        kept = self._vectors
        missing = [t for t in texts if t not in kept]
        if missing:
            kept.update(zip(missing, model.encode(missing, Purpose.DOCUMENT), strict=True))
        out = np.stack([kept[t] for t in texts])
        for t in texts:
            kept.move_to_end(t)
        while len(kept) > SENTENCE_VECTORS:
            kept.popitem(last=False)
        return out

    async def generate(self, request: EngineRequest) -> AsyncGenerator[Piece, None]:
        loop = asyncio.get_running_loop()
        self._active.add(request.request_id)
        try:
            answer = await loop.run_in_executor(
                self._pool,
                self._compose,
                request.question,
                request.sources,
                request.max_tokens,
                request.question_vector,
            )
            left = request.max_tokens
            for i, sentence in enumerate(answer):
                tokens = sentence[:left]
                if request.request_id in self._aborted or not tokens:
                    return
                left -= len(tokens)
                self.produced += len(tokens)
                text = " ".join(tokens)
                yield Piece(text if i == 0 else " " + text, len(tokens))
                await asyncio.sleep(0)  # a sentence boundary: cancellation lands here
        finally:
            self._active.discard(request.request_id)
            self._aborted.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        if request_id in self._active:
            self._aborted.add(request_id)

    async def health(self) -> bool:
        return self._model is not None

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
