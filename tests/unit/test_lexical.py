"""Hybrid search's lexical half: BM25 terms and ranking, tenant statistics, fusion, and the
store keeping it exactly as durable as the vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ragmesh.retrieval import requests
from ragmesh.retrieval.index import IndexParams
from ragmesh.retrieval.lexical import Fusion, LexicalIndex, fuse, terms
from ragmesh.retrieval.requests import Limits
from ragmesh.retrieval.store import ChunkIn, ChunkStore

DIM = 16
T = "acme"
TEXTS = {
    "pickle": "Use HIGHEST_PROTOCOL to pickle with the newest protocol version available.",
    "json": "Serialize objects to a JSON formatted string with the dumps function.",
    "marshal": "Marshal writes values in an internal format; the version is not stable.",
    "shelve": "A shelf is a persistent dictionary backed by a database of pickled objects.",
}


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def test_terms_keep_identifiers_whole_and_in_parts_and_stem_words() -> None:
    assert terms("HIGHEST_PROTOCOL") == ["highest_protocol", "highest", "protocol"]
    assert terms("Monitoring the events of a file") == ["monitor", "event", "file"]
    assert terms("open(2) and O_APPEND") == ["open", "2", "o_append", "o", "append"]


def index_of(texts: dict[str, str], code: int = 0) -> tuple[LexicalIndex, list[str]]:
    index, names = LexicalIndex(), list(texts)
    for slot, name in enumerate(names):
        index.add(code, slot, texts[name])
    return index, names


def test_bm25_ranks_the_chunk_with_the_exact_identifier_first() -> None:
    index, names = index_of(TEXTS)
    owner = np.zeros(len(names), dtype=np.int32)
    found = index.search(0, "what is HIGHEST_PROTOCOL?", 4, owner)
    assert names[found[0][0]] == "pickle" and len(found) == 1  # no other chunk has it
    ranked = [names[s] for s, _ in index.search(0, "protocol version", 4, owner)]
    assert ranked[0] == "pickle" and "marshal" in ranked


def test_statistics_are_per_tenant_and_removed_chunks_are_not_found() -> None:
    index, names = index_of(TEXTS, code=0)
    alone, _ = index_of(TEXTS, code=0)
    # another tenant's chunks, full of the query's words, change nothing for tenant 0
    for slot in range(4, 40):
        index.add(1, slot, "protocol protocol protocol")
    owner = np.array([0] * 4 + [1] * 36, dtype=np.int32)
    query = "protocol version"
    assert index.search(0, query, 4, owner) == alone.search(0, query, 4, owner[:4])
    assert all(slot >= 4 for slot, _ in index.search(1, query, 50, owner))
    index.remove(0, 0, TEXTS["pickle"])
    owner[0] = -1  # the store marks a removed slot
    assert 0 not in [s for s, _ in index.search(0, query, 4, owner)]


def test_reciprocal_rank_fusion_prefers_what_both_rankings_rank_well() -> None:
    assert fuse([1, 2, 3], [3, 4, 1], 3, 1.0, 1.0) == [1, 3, 2]
    assert fuse([1, 2, 3], [3, 4, 1], 2, 1.0, 0.0) == [1, 2]  # dense only
    assert fuse([1, 2], [4], 3, 1.0, 3.0)[0] == 4  # the weights by config


def store_at(path: Path, every: int = 1000) -> ChunkStore:
    s = ChunkStore(path, IndexParams("flat", DIM, "cpu"), every, Fusion(1.0, 1.0, 50))
    s.open()
    return s


def put(store: ChunkStore, chunks: list[ChunkIn], tenant: str = T) -> None:
    store.upsert(tenant, chunks, requests.upsert(chunks, Limits(), DIM))


def ask(store: ChunkStore, text: str, seed: int, k: int = 1, hybrid: bool = True) -> list[str]:
    q = requests.queries(1, DIM, vec(seed).tobytes(), k, Limits(), DIM)
    return [h.document_id for h in store.search(T, q, k, {}, 0, [text] if hybrid else [])[0]]


def test_hybrid_search_finds_by_words_what_the_vectors_miss_and_keeps_it_durable(
    tmp_path: Path,
) -> None:
    s = store_at(tmp_path, every=3)  # snapshots and log replay both exercised
    put(
        s, [ChunkIn(f"{n}#0", n, t, {}, vec(i).tobytes()) for i, (n, t) in enumerate(TEXTS.items())]
    )
    put(
        s,
        [
            ChunkIn(f"noise{i}#0", f"noise{i}", f"chunk {i}", {}, vec(100 + i).tobytes())
            for i in range(40)
        ],
    )
    # the query vector is json's: dense alone answers json, the words HIGHEST_PROTOCOL pickle
    assert ask(s, "HIGHEST_PROTOCOL", seed=1, hybrid=False) == ["json"]
    assert ask(s, "HIGHEST_PROTOCOL", seed=1) == ["pickle"]
    hit = s.search(
        T,
        requests.queries(1, DIM, vec(1).tobytes(), 1, Limits(), DIM),
        1,
        {},
        0,
        ["HIGHEST_PROTOCOL"],
    )[0][0]
    assert (
        abs(hit.score - float(vec(0) @ vec(1) / np.linalg.norm(vec(0)) / np.linalg.norm(vec(1))))
        < 1e-5
    )
    s.close()
    again = store_at(tmp_path)  # reopened: the lexical index is rebuilt with the vectors
    assert ask(again, "HIGHEST_PROTOCOL", seed=1) == ["pickle"]
    assert again.delete(T, [], ["pickle"]) == 1
    assert "pickle" not in ask(again, "HIGHEST_PROTOCOL", seed=1, k=5)
    assert ask(again, "HIGHEST_PROTOCOL", seed=1, k=1) == ["json"]  # dense still answers
    again._compact()  # slots renumbered: the lexical index follows
    code = again._tenant_code[T]
    found = again.lexical.search(code, "HIGHEST_PROTOCOL marshal", 5, again._owner)
    assert [again.live_payload(slot).document_id for slot, _ in found] == ["marshal"]
    # other tenants never see it
    assert again.search(
        "other",
        requests.queries(1, DIM, vec(1).tobytes(), 1, Limits(), DIM),
        1,
        {},
        0,
        ["HIGHEST_PROTOCOL"],
    ) == [[]]


def test_a_term_repeated_hundreds_of_times_in_a_chunk_is_counted_and_ranked() -> None:
    """Counts in a chunk are kept in a byte (capped at 255, where BM25 saturated long ago)."""
    index, names = index_of({"flood": "flood " * 300 + "gauge", "once": "flood gauge weir"})
    owner = np.zeros(len(names), dtype=np.int32)
    assert [names[s] for s, _ in index.search(0, "flood", 2, owner)] == ["flood", "once"]
