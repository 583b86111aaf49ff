"""The lexical half of hybrid search: an Okapi BM25 inverted index over the chunk texts, and
reciprocal rank fusion with the dense results. No grpc here.

The index lives beside the vectors in the chunk store and is fed by the same code paths
(a write applied, a log record replayed, a snapshot loaded, a compaction): it is exactly as
durable, as versioned and as tenant-scoped as the vectors, and needs no files of its own.
Postings are kept per term as compact arrays of (slot, term frequency); a removed chunk's
postings stay until the next compaction and are masked out by the store's slot owners. The
document frequencies and lengths behind BM25's statistics are kept per tenant, so one
tenant's documents never change another's scores.

Terms: lowercase words stemmed (``monitoring`` → ``monitor``), identifiers with underscores
kept whole (``highest_protocol``) and also in parts (``highest``, ``protocol``), less a few
English stop words.
"""

from __future__ import annotations

import functools
import math
import re
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import snowballstemmer  # type: ignore[import-untyped]

from ragmesh.kit.domain import Hit

_TOKEN = re.compile(r"[0-9a-z_]+")
STOP_WORDS = frozenset(
    "a an and are as at be by can do does for from how i if in into is it its of on or that "
    "the their then there these this to was what when where which who why will with".split()
)
K1 = 1.2
B = 0.75
#: constant of reciprocal rank fusion: the weight of rank r is 1 / (RRF_K + r)
RRF_K = 60


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses: the weight of each ranking, and how many candidates each
    ranking gives the fusion (at least the request's top_k). lexical_weight 0: dense only."""

    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    candidates: int = 50


HYBRID = Fusion()  # the defaults


_STEMMER = snowballstemmer.stemmer("english")


@functools.lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    return str(_STEMMER.stemWord(word))


def indexed_text(text: str, metadata: Mapping[str, str]) -> str:
    """What the lexical index reads of a chunk: its document's title and summary (metadata
    ``title`` and ``summary``, as ingest sets them) and its text."""
    return " ".join((metadata.get("title", ""), metadata.get("summary", ""), text))


def terms(text: str) -> list[str]:
    """The indexed terms of ``text``: words stemmed (Snowball, English), identifiers whole
    and in parts."""
    out = []
    for word in _TOKEN.findall(text.lower()):
        parts = [p for p in word.split("_") if p] if "_" in word else []
        for term in (word.strip("_"), *parts) if len(parts) > 1 else (word.strip("_"),):
            if term and term not in STOP_WORDS:
                out.append(term if "_" in term else _stem(term))
    return out


class LexicalIndex:
    """BM25 over slots; slots and tenant codes are the chunk store's."""

    def __init__(self) -> None:
        self._slots: dict[str, array[int]] = {}
        self._tfs: dict[str, array[int]] = {}
        self._df: dict[tuple[int, str], int] = {}  # (tenant code, term) -> live chunks
        self._docs: dict[int, int] = {}  # tenant code -> live chunks
        self._length: dict[int, int] = {}  # tenant code -> summed lengths of live chunks
        self._len = np.zeros(0, dtype=np.int32)  # the length (in terms) of each slot

    def add(self, code: int, slot: int, text: str) -> None:
        counts = Counter(terms(text))
        for term, tf in counts.items():
            if term not in self._slots:
                self._slots[term] = array("i")
                self._tfs[term] = array("B")  # a term's count in a chunk, capped at 255
            self._slots[term].append(slot)
            self._tfs[term].append(min(tf, 255))
            self._df[code, term] = self._df.get((code, term), 0) + 1
        if slot >= len(self._len):
            grown = np.zeros(max(slot + 1, 2 * len(self._len), 1024), dtype=np.int32)
            grown[: len(self._len)] = self._len
            self._len = grown
        length = sum(counts.values())
        self._len[slot] = length
        self._docs[code] = self._docs.get(code, 0) + 1
        self._length[code] = self._length.get(code, 0) + length

    def remove(self, code: int, slot: int, text: str) -> None:
        """Forget a chunk's statistics (its postings are masked until a compaction)."""
        for term in set(terms(text)):
            left = self._df.get((code, term), 0) - 1
            if left > 0:
                self._df[code, term] = left
            else:
                self._df.pop((code, term), None)
        self._docs[code] = self._docs.get(code, 0) - 1
        self._length[code] = self._length.get(code, 0) - int(self._len[slot])

    def search(
        self,
        code: int,
        query: str,
        k: int,
        owner: npt.NDArray[np.int32],
        allowed: npt.NDArray[np.bool_] | None = None,
    ) -> list[tuple[int, float]]:
        """The top ``k`` (slot, BM25 score) of tenant ``code`` for ``query``; ``owner`` is the
        tenant code of each slot (-1: removed), ``allowed`` an optional mask of slots."""
        n = self._docs.get(code, 0)
        if n <= 0:
            return []
        average = max(1.0, self._length.get(code, 0) / n)
        scores = np.zeros(len(owner), dtype=np.float32)
        for term in set(terms(query)):
            df = self._df.get((code, term), 0)
            if not df:
                continue
            slots = np.frombuffer(self._slots[term], dtype=np.int32)
            keep = owner[slots] == code
            if allowed is not None:
                keep &= allowed[slots]
            slots = slots[keep]
            tf = np.frombuffer(self._tfs[term], dtype=np.uint8)[keep].astype(np.float32)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            norm = K1 * (1.0 - B + B * self._len[slots] / average)
            weights = idf * tf * (K1 + 1.0) / (tf + norm)
            np.add.at(scores, slots, weights)
        found = np.flatnonzero(scores)
        if len(found) > k:
            found = found[np.argpartition(-scores[found], k - 1)[:k]]
        found = found[np.lexsort((found, -scores[found]))]
        return [(int(s), float(scores[s])) for s in found]


def fuse(
    dense: Sequence[int],
    lexical: Sequence[int],
    k: int,
    dense_weight: float,
    lexical_weight: float,
) -> list[int]:
    """Reciprocal rank fusion of two rankings of slots: the top ``k`` slots by
    ``Σ weight / (RRF_K + rank)`` (ties: the dense ranking's order first)."""
    fused: dict[int, float] = {}
    for weight, ranking in ((dense_weight, dense), (lexical_weight, lexical)):
        for rank, slot in enumerate(ranking, 1):
            fused[slot] = fused.get(slot, 0.0) + weight / (RRF_K + rank)
    order: dict[int, int] = {}
    for i, slot in enumerate([*dense, *lexical]):
        order.setdefault(slot, i)
    return sorted(fused, key=lambda s: (-fused[s], order[s]))[:k]


def rerank(hits: Sequence[Hit], query: str, top_k: int, fusion: Fusion) -> list[Hit]:
    """Hybrid over a dense candidate list alone (a store without a lexical index of its own):
    BM25 with the candidates' own statistics, fused with their dense order."""
    if fusion.lexical_weight <= 0 or not hits:
        return list(hits[:top_k])
    index = LexicalIndex()
    for slot, hit in enumerate(hits):
        index.add(0, slot, indexed_text(hit.text, hit.metadata))
    owner = np.zeros(len(hits), dtype=np.int32)
    lexical = [slot for slot, _ in index.search(0, query, len(hits), owner)]
    order = fuse(range(len(hits)), lexical, top_k, fusion.dense_weight, fusion.lexical_weight)
    return [hits[slot] for slot in order]
